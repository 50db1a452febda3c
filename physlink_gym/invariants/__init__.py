"""Invariants: the type, the transition record and the built-in checks.

The MuJoCo checks (``joint_limits``, ``sim_health``, ``kinematic_consistency``,
``mujoco_energy``, ``momentum``) load lazily, so this package imports without the ``mujoco``
extra installed.
"""

from typing import Any

from physlink_gym.invariants.builtin import (
    PENDULUM_TOLERANCE,
    action_bounds,
    box_excess,
    count_nonfinite,
    energy_balance,
    energy_balance_residual,
    finite,
    obs_bounds,
    pendulum_energy,
    pendulum_energy_bound,
    pendulum_energy_residual,
)
from physlink_gym.invariants.by_name import coerce_invariant
from physlink_gym.invariants.core import (
    Invariant,
    InvariantResultError,
    NotApplicableError,
    Transition,
    batch_invariant,
    register_invariant,
    to_residual,
)

_MUJOCO = ("joint_limits", "kinematic_consistency", "momentum", "mujoco_energy", "sim_health")

__all__ = [
    "PENDULUM_TOLERANCE",
    "Invariant",
    "InvariantResultError",
    "NotApplicableError",
    "Transition",
    "action_bounds",
    "batch_invariant",
    "box_excess",
    "coerce_invariant",
    "count_nonfinite",
    "energy_balance",
    "energy_balance_residual",
    "finite",
    "joint_limits",
    "kinematic_consistency",
    "momentum",
    "mujoco_energy",
    "obs_bounds",
    "pendulum_energy",
    "pendulum_energy_bound",
    "pendulum_energy_residual",
    "register_invariant",
    "sim_health",
    "to_residual",
]


def __getattr__(name: str) -> Any:
    if name in _MUJOCO:
        from physlink_gym.invariants import mujoco as _mujoco_module

        return getattr(_mujoco_module, name)
    raise AttributeError(f"module 'physlink_gym.invariants' has no attribute {name!r}")
