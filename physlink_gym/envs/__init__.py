"""Small analytic physical systems with exact energy and work, registered as Gymnasium envs.

Importing this package registers ``physlink/SpringMass-v0``, ``physlink/DampedPendulum-v0`` and
``physlink/ProjectileDrag-v0`` (200-step limit each). ``gym.make("physlink_gym.envs:
physlink/SpringMass-v0")`` imports it for you. Each env's ``energy(obs)`` and
``transition_work(transition)`` plug straight into ``invariants.energy_balance``, and the
bookkeeping closes to round-off (see :mod:`physlink_gym.envs.base`).

Example:
    >>> import gymnasium as gym
    >>> import physlink_gym.envs
    >>> env = gym.make("physlink/SpringMass-v0")
    >>> obs, _ = env.reset(seed=0)
    >>> nxt, *_ = env.step([0.5])
    >>> u = env.unwrapped
    >>> abs(u.energy(nxt) - u.energy(obs) - u.work(obs, [0.5], nxt)) < 1e-12
    True
"""

from __future__ import annotations

import gymnasium as gym

from physlink_gym.envs.base import AnalyticEnv
from physlink_gym.envs.pendulum import DampedPendulumEnv
from physlink_gym.envs.projectile import ProjectileDragEnv
from physlink_gym.envs.spring_mass import SpringMassEnv

__all__ = ["ENV_IDS", "AnalyticEnv", "DampedPendulumEnv", "ProjectileDragEnv", "SpringMassEnv"]

ENV_IDS: dict[str, str] = {
    "physlink/SpringMass-v0": "physlink_gym.envs.spring_mass:SpringMassEnv",
    "physlink/DampedPendulum-v0": "physlink_gym.envs.pendulum:DampedPendulumEnv",
    "physlink/ProjectileDrag-v0": "physlink_gym.envs.projectile:ProjectileDragEnv",
}


def _register() -> None:
    for env_id, entry_point in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=200)


_register()
