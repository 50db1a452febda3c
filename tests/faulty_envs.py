"""A Pendulum-v1 wrapper that injects faults, shared by the offline and vector-env tests."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class PendulumFaults(gym.Wrapper):
    """NaN readings (2%), teleports (3%: the angle jumps) and readings past |ω| <= 8 (2%)."""

    def __init__(self, env: gym.Env, seed: int = 0) -> None:
        super().__init__(env)
        self.rng = np.random.default_rng(seed)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs = obs.copy()
        u = self.rng.random()
        if u < 0.02:
            obs[2] = np.nan
        elif u < 0.05:
            angle = self.rng.uniform(-np.pi, np.pi)
            obs[:2] = np.cos(angle), np.sin(angle)  # a teleport: energy jumps
        elif u < 0.07:
            obs[2] = 9.5  # past the |ω| <= 8 bound
        return obs, reward, terminated, truncated, info


def _fails_from_step_3(t):  # an invariant that raises on the fourth step of an episode
    if t["step"] >= 3:
        raise RuntimeError("kaboom")
    return 0.0


def raising_invariant_env():
    """Pendulum whose invariant 'boomer' raises from step 3 on, with on_error='raise'."""
    from physlink_gym import Invariant, InvariantWrapper

    return InvariantWrapper(gym.make("Pendulum-v1"), [Invariant("boomer", fn=_fails_from_step_3)],
                            on_error="raise")
