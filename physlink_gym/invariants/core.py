"""The invariant type, the transition record and the residual contract.

An invariant is a name, a residual function, a tolerance and a mode. The wrapper *binds* each
invariant to the env once, at construction: :meth:`Invariant.bind` returns the per-step callable
(with index arrays precomputed) or raises :class:`NotApplicableError` when the env lacks what the
invariant needs (for example MuJoCo data on CartPole).

A residual is a float >= 0; arrays reduce by max-abs. A transition violates the invariant when
``residual > tolerance`` **or** the residual is not finite: NaN never passes.

Example:
    >>> import numpy as np
    >>> inv = Invariant("speed", lambda t: abs(t.get("next_obs")[0]), tolerance=1.0, mode="soft")
    >>> inv.is_violation(0.5), inv.is_violation(2.0), inv.is_violation(float("nan"))
    (False, True, True)
    >>> to_residual(np.array([0.5, -3.0]))
    3.0
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypedDict

import numpy as np

from physlink_gym.errors import ConfigurationError, PhysLinkError, ValidationError

__all__ = [
    "MODES",
    "BoundCheck",
    "Invariant",
    "InvariantResultError",
    "NotApplicableError",
    "Transition",
    "batch_invariant",
    "register_invariant",
    "to_residual",
    "validate_invariant_args",
]

Mode = Literal["hard", "soft"]
MODES: tuple[str, ...] = ("hard", "soft")


class Transition(TypedDict, total=False):
    """One environment transition, as every invariant sees it.

    Keys: ``obs`` (observation before the step, a copy), ``action``, ``reward`` (the env's own
    reward, before any penalty), ``next_obs``, ``terminated``, ``truncated``, ``info`` (the
    env's info dict), ``dt`` (seconds per env step, or NaN when unknown), ``step`` (index of the
    step within the episode, from 0), ``env`` (the *unwrapped* env, for simulator access) and
    ``cache`` (a dict emptied before every step, where invariants share work such as one
    scratch MuJoCo forward pass).
    """

    obs: Any
    action: Any
    reward: float
    next_obs: Any
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    dt: float
    step: int
    env: Any
    cache: dict[str, Any]


class BoundCheck(Protocol):
    """What :meth:`Invariant.bind` returns: the per-step residual function.

    It may also define ``on_reset(env, obs)`` and ``before_step(env, action)``; the wrapper calls
    them (when present) after every reset and before every step, so checks that compare the
    simulator state before and after a step can snapshot it.
    """

    def __call__(self, transition: Transition, /) -> Any:
        """Return the residual of one transition."""
        ...


class NotApplicableError(PhysLinkError):
    """The invariant cannot apply to this env (reported as NOT_APPLICABLE, never raised on step)."""


class InvariantResultError(ValidationError):
    """An invariant returned something that is not a residual (None, a string, complex, < 0)."""


def _default_bind(fn: Callable[[Transition], Any]) -> Callable[[Any], Callable[[Transition], Any]]:
    def bind(env: Any) -> Callable[[Transition], Any]:
        return fn

    return bind


@dataclass(frozen=True)
class Invariant:
    """A physical invariant checked on every transition.

    Args:
        name: Unique name within a wrapper; used in reports and TensorBoard tags.
        fn: Residual function ``fn(transition) -> float >= 0`` (arrays reduce by max-abs).
            Ignored when ``binder`` is given.
        tolerance: Finite threshold >= 0; a residual above it is a violation.
        mode: ``"hard"`` flags the transition (kept out of training data); ``"soft"`` turns the
            residual into a reward penalty and a cost.
        requires: What the invariant needs from the env, e.g. ``("mujoco",)``; informational.
        binder: ``binder(env) -> BoundCheck``, called once per wrapped env. Raises
            :class:`NotApplicableError` when the env cannot support the check.
        description: One line for reports and docs.
        hint: What a violation usually means, shown beside a FAIL in the report's summary
            (e.g. a known property of the env rather than a fault).
        transition_only: The residual needs only the transition (``obs``, ``action``,
            ``next_obs``, ``reward``, ``dt``), never the live simulator: such an invariant
            can also score the world model's decoded imagined transitions. Refused together
            with ``requires=("mujoco",)``.
    """

    name: str
    fn: Callable[[Transition], Any] | None = None
    tolerance: float = 0.0
    mode: Mode = "hard"
    requires: tuple[str, ...] = ()
    binder: Callable[[Any], BoundCheck] | None = field(default=None, compare=False)
    description: str = ""
    hint: str = ""
    transition_only: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.transition_only, bool) or (
            self.transition_only and "mujoco" in self.requires
        ):
            raise ConfigurationError(
                got=f"transition_only={self.transition_only!r} for invariant {self.name!r} "
                f"(requires={self.requires!r})",
                expected="True only for an invariant that needs nothing but the transition",
                fix="pass transition_only=False for checks that read the simulator",
            )
        if self.fn is None and self.binder is None:
            raise ConfigurationError(
                got=f"invariant {self.name!r} with neither fn nor binder",
                expected="a residual function fn(transition) or a binder(env)",
                fix="pass fn=lambda t: ... or use a built-in from physlink_gym.invariants",
            )
        validate_invariant_args(self.name, self.fn, self.tolerance, self.mode,
                                check_fn=self.binder is None)

    def bind(self, env: Any) -> BoundCheck:
        """Return the per-step residual function for ``env`` (may raise NotApplicableError)."""
        if self.binder is not None:
            try:
                return self.binder(env)
            except AttributeError as exc:  # the env lacks what the check reads
                needs = f" ({', '.join(self.requires)})" if self.requires else ""
                raise NotApplicableError(
                    got=f"invariant {self.name!r} on "
                    f"{type(getattr(env, 'unwrapped', env)).__name__}, which lacks what its "
                    f"binder reads ({exc})",
                    expected=f"an env that provides it{needs}",
                    fix="leave this invariant out for this env, or give the env that attribute",
                ) from None
        assert self.fn is not None
        return _default_bind(self.fn)(env)

    def is_violation(self, residual: float) -> bool:
        """Whether ``residual`` violates this invariant (NaN and inf always do)."""
        return not math.isfinite(residual) or residual > self.tolerance


def validate_invariant_args(
    name: Any, fn: Any, tolerance: Any, mode: Any, *, check_fn: bool = True
) -> None:
    """Validate the pieces of an invariant; raise a ConfigurationError naming the bad one."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(
            got=f"name={name!r}", expected="a non-empty str", fix="pass name='my_invariant'"
        )
    if check_fn:
        _check_callable(name, fn)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.floating,
                                                                  np.integer)):
        raise ConfigurationError(
            got=f"tolerance={tolerance!r} for invariant {name!r}",
            expected="a finite real number >= 0",
            fix="pass tolerance=0.01 (or 0.0 for an exact invariant)",
        )
    if not math.isfinite(float(tolerance)) or float(tolerance) < 0:
        raise ConfigurationError(
            got=f"tolerance={tolerance!r} for invariant {name!r}",
            expected="a finite real number >= 0",
            fix="pass tolerance=0.01 (or 0.0 for an exact invariant)",
        )
    if mode not in MODES:
        raise ConfigurationError(
            got=f"mode={mode!r} for invariant {name!r}",
            expected="'hard' (flag the transition) or 'soft' (penalise the reward)",
            fix="pass mode='hard' or mode='soft'",
        )


def _check_callable(name: str, fn: Any) -> None:
    if not callable(fn):
        raise ConfigurationError(
            got=f"fn={fn!r} for invariant {name!r}",
            expected="a callable fn(transition) -> float",
            fix="pass a function that takes one transition dict",
        )
    try:
        inspect.signature(fn).bind(object())
    except TypeError as exc:
        raise ConfigurationError(
            got=f"fn {getattr(fn, '__name__', fn)!r} for invariant {name!r} ({exc})",
            expected="a callable accepting exactly one positional argument (the transition)",
            fix="define it as def fn(transition): ...",
        ) from None
    except ValueError:  # builtins without a signature: accept
        return


def to_residual(value: Any) -> float:
    """Reduce an invariant's return value to a float residual.

    Real scalars pass through; arrays reduce by max-abs (an empty array gives 0.0); NaN and inf
    are kept (they count as violations). None, strings, complex numbers, bools and negative values
    raise :class:`InvariantResultError`.

    Example:
        >>> to_residual(0.25), to_residual([1.0, -2.0]), to_residual(float("inf"))
        (0.25, 2.0, inf)
    """
    if isinstance(value, (bool, np.bool_)) or value is None or isinstance(value, (str, bytes)):
        raise _bad_result(value)
    if isinstance(value, (float, int, np.floating, np.integer)):
        result = float(value)
    else:
        try:
            arr = np.asarray(value)
        except Exception:
            raise _bad_result(value) from None
        if arr.dtype.kind not in "fiu":
            raise _bad_result(value)
        if arr.size == 0:
            return 0.0
        result = float(np.max(np.abs(arr)))
        return result
    if result < 0:
        raise _bad_result(value)
    return result


def _bad_result(value: Any) -> InvariantResultError:
    return InvariantResultError(
        got=f"an invariant returned {value!r} (type {type(value).__name__})",
        expected="a real residual >= 0 (a float, or an array reduced by max-abs)",
        fix="return abs(...) of your quantity as a float",
    )


def register_invariant(
    target: Any, name: str, fn: Callable[[Transition], Any], tolerance: float,
    mode: Mode = "soft", *, transition_only: bool = False,
) -> Invariant:
    """Attach a plain callable to ``target`` as an invariant and return it.

    ``target`` is anything with an ``add_invariant(invariant)`` method: an
    :class:`~physlink_gym.InvariantWrapper` (or a DreamerV3 model whose env is wrapped).
    Everything is validated at once: ``fn`` takes one positional argument, ``tolerance`` is a
    finite float >= 0, ``mode`` is known, and ``name`` is unique on ``target``.

    Example:
        >>> class Target:
        ...     def __init__(self): self.added = []
        ...     def add_invariant(self, inv): self.added.append(inv.name)
        >>> t = Target()
        >>> _ = register_invariant(t, "height", lambda tr: 0.0, tolerance=0.1)
        >>> t.added
        ['height']
    """
    invariant = Invariant(name=name, fn=fn, tolerance=tolerance, mode=mode,
                          transition_only=transition_only)
    add = getattr(target, "add_invariant", None)
    if add is None:
        raise ConfigurationError(
            got=f"target of type {type(target).__name__}",
            expected="an InvariantWrapper (or an object with add_invariant)",
            fix="wrap your env first: env = InvariantWrapper(env, [])",
        )
    add(invariant)
    return invariant


class _BatchCheck:
    """Bound :func:`batch_invariant`: ``batch`` on many transitions, ``__call__`` on one."""

    def __init__(self, fn: Callable[[dict[str, Any]], Any],
                 torch_fn: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.batch = fn
        self.torch = torch_fn  # differentiable version for the physics loss, if given

    def __call__(self, t: Transition) -> Any:
        one = {key: np.asarray(t.get(key))[None] for key in ("obs", "action", "next_obs")}
        one["reward"] = np.asarray([t["reward"]], np.float64)
        one["first"] = np.asarray([t.get("step", 1) == 0])
        return np.asarray(self.batch(one)).reshape(-1)[0]


def batch_invariant(name: str, fn: Callable[[dict[str, Any]], Any], tolerance: float = 0.0,
                    mode: Mode = "soft", *,
                    torch_fn: Callable[[dict[str, Any]], Any] | None = None) -> Invariant:
    """An invariant from a vectorised residual function: one residual per transition of a batch.

    ``fn(batch)`` gets a dict of arrays with a leading axis ``M`` (``obs``, ``action``,
    ``next_obs``, ``reward`` and ``first``, True on the first transition of an episode) and
    returns ``M`` residuals >= 0. The same invariant runs online in
    :class:`~physlink_gym.InvariantWrapper` (as a batch of one), offline in
    :func:`physlink_gym.audit` and in :class:`~physlink_gym.vec.BatchedInvariantWrapper` (one
    call for all transitions or sub-envs).

    ``torch_fn``, the same residual written with torch operations on a dict of tensors
    (``obs``, ``action`` in env units, ``next_obs``), makes a soft invariant usable as a
    training signal for DreamerV3's world model (config ``physics_weight``).

    Example:
        >>> inv = batch_invariant("speed", lambda b: np.abs(b["next_obs"])[:, 2], tolerance=8.0)
        >>> check = inv.bind(None)
        >>> check.batch({"next_obs": np.array([[0, 0, 1.0], [0, 0, -9.0]])}).tolist()
        [1.0, 9.0]
        >>> float(check({"obs": [0, 0, 0.0], "action": [0.0], "next_obs": [0, 0, -3.0],
        ...              "reward": 0.0, "step": 4}))
        3.0
    """
    _check_callable(name, fn)
    if torch_fn is not None:
        _check_callable(name, torch_fn)
    return Invariant(name=name, tolerance=tolerance, mode=mode,
                     binder=lambda env: _BatchCheck(fn, torch_fn),
                     description="a vectorised residual function", transition_only=True)
