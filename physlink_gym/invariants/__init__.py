"""Invariants: the type, the transition record and the built-in checks."""

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
from physlink_gym.invariants.core import (
    Invariant,
    InvariantResultError,
    NotApplicableError,
    Transition,
    register_invariant,
    to_residual,
)

__all__ = [
    "PENDULUM_TOLERANCE",
    "Invariant",
    "InvariantResultError",
    "NotApplicableError",
    "Transition",
    "action_bounds",
    "box_excess",
    "count_nonfinite",
    "energy_balance",
    "energy_balance_residual",
    "finite",
    "obs_bounds",
    "pendulum_energy",
    "pendulum_energy_bound",
    "pendulum_energy_residual",
    "register_invariant",
    "to_residual",
]
