"""Invariants: the type, the transition record and the built-in checks."""

from physlink_gym.invariants.core import (
    Invariant,
    InvariantResultError,
    NotApplicableError,
    Transition,
    register_invariant,
    to_residual,
)

__all__ = [
    "Invariant",
    "InvariantResultError",
    "NotApplicableError",
    "Transition",
    "register_invariant",
    "to_residual",
]
