"""Built-in invariants by name: how a name in a spec, a config or a command line becomes one.

The wrappers, ``audit``, the command line and ``gym.make`` of a recorded spec all take an
invariant given as ``"finite"`` or ``{"name": "finite", "tolerance": 1.0, "mode": "soft"}``;
this module is the one place that turns such a name into the :class:`Invariant`.
"""

from __future__ import annotations

from typing import Any

from physlink_gym._builtin_names import BUILTIN_INVARIANTS
from physlink_gym.errors import ConfigurationError
from physlink_gym.invariants import builtin
from physlink_gym.invariants.core import Invariant

__all__ = ["coerce_invariant"]


def _factory(name: str) -> Any:
    """The factory of a built-in invariant (the MuJoCo ones load ``mujoco`` only here)."""
    if name not in BUILTIN_INVARIANTS:
        return None
    if hasattr(builtin, name):
        return getattr(builtin, name)
    from physlink_gym.invariants import mujoco

    return getattr(mujoco, name, None)


def coerce_invariant(item: Any) -> Invariant:
    """An Invariant, or a built-in one from its name or ``{"name", "tolerance", "mode"}``.

    How the wrappers, ``audit``, the command line and ``gym.make`` of a recorded spec take an
    invariant given by name.

    Example:
        >>> coerce_invariant({"name": "finite", "tolerance": 1.0}).tolerance
        1.0
    """
    if isinstance(item, Invariant):
        return item
    spec = {"name": item} if isinstance(item, str) else item
    name = spec.get("name") if isinstance(spec, dict) else None
    factory = _factory(name) if isinstance(name, str) else None
    if name in BUILTIN_INVARIANTS and callable(factory) and set(spec) <= {"name", "tolerance",
                                                                           "mode"}:
        result = factory(**{k: v for k, v in spec.items() if k != "name"})
        assert isinstance(result, Invariant)
        return result
    raise ConfigurationError(
        got=f"invariant {item!r}",
        expected="an Invariant, or a built-in invariant's name (optionally as a dict with "
        f"name, tolerance, mode): {', '.join(BUILTIN_INVARIANTS)}",
        fix="pass invariant objects, e.g. [invariants.finite(), register your own with "
        "Invariant(name, fn)]; a custom invariant cannot be rebuilt from env.spec",
    )
