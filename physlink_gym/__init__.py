"""physlink_gym: check Gymnasium transitions against physical invariants and train DreamerV3.

The public API is imported lazily: ``import physlink_gym`` does not import torch; the first
access to :class:`DreamerV3` does.

Example:
    >>> import physlink_gym
    >>> physlink_gym.__version__.count(".") >= 2
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from physlink_gym._version import __version__
from physlink_gym.errors import PhysLinkError

if TYPE_CHECKING:  # pragma: no cover - imports for type checkers only
    from physlink_gym import invariants
    from physlink_gym._audit import audit
    from physlink_gym.agents.dreamerv3.algorithm import DreamerV3
    from physlink_gym.diagnostics import doctor
    from physlink_gym.invariants.core import Invariant, register_invariant
    from physlink_gym.report import ComplianceReport
    from physlink_gym.spaces import ActionSpace, ObservationSpace
    from physlink_gym.wrappers import InvariantWrapper, valid_mask

__all__ = [
    "ActionSpace",
    "ComplianceReport",
    "DreamerV3",
    "Invariant",
    "InvariantWrapper",
    "ObservationSpace",
    "PhysLinkError",
    "__version__",
    "audit",
    "doctor",
    "invariants",
    "register_invariant",
    "valid_mask",
]

_LAZY = {
    "ActionSpace": "physlink_gym.spaces",
    "ObservationSpace": "physlink_gym.spaces",
    "ComplianceReport": "physlink_gym.report",
    "DreamerV3": "physlink_gym.agents.dreamerv3.algorithm",
    "Invariant": "physlink_gym.invariants.core",
    "register_invariant": "physlink_gym.invariants.core",
    "InvariantWrapper": "physlink_gym.wrappers",
    "valid_mask": "physlink_gym.wrappers",
    "doctor": "physlink_gym.diagnostics",
    "audit": "physlink_gym._audit",
}


def __getattr__(name: str) -> Any:
    if name == "invariants":
        return importlib.import_module("physlink_gym.invariants")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'physlink_gym' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        raise missing_extra(exc, name) from None
    globals()[name] = value
    return value


_EXTRAS = {"torch": "agent", "stable_baselines3": "agent", "safetensors": "agent",
           "tensorboard": "agent", "tqdm": "agent", "rich": "agent", "matplotlib": "viz",
           "mujoco": "mujoco", "minari": "minari", "ray": "ray"}


def missing_extra(exc: ModuleNotFoundError, what: str) -> Exception:
    """A one-line error naming the optional extra that provides ``exc.name`` (or ``exc``)."""
    package = (exc.name or "").split(".")[0]
    extra = _EXTRAS.get(package)
    if extra is None:
        return exc
    from physlink_gym.errors import ConfigurationError

    return ConfigurationError(
        got=f"{what}, which needs {package}, not installed",
        expected=f"the {extra!r} extra of physlink-gym",
        fix=f'pip install "physlink-gym[{extra}]"',
    )


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
