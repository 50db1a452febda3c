"""The names of the built-in invariants, in one light module.

The wrapper rebuilds built-in invariants by name (``gym.make`` of a recorded spec) and the
command line offers them (``--invariants``); both read this table, which imports nothing, so
``physlink-gym --help`` stays fast.
"""

from __future__ import annotations

__all__ = ["BUILTIN_INVARIANTS"]

BUILTIN_INVARIANTS = (
    "finite", "obs_bounds", "action_bounds", "pendulum_energy", "joint_limits", "sim_health",
    "kinematic_consistency", "mujoco_energy", "momentum",
)
