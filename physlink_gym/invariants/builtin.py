"""Built-in invariants that need no simulator internals.

Each factory returns an :class:`~physlink_gym.invariants.Invariant`. The residual is a small pure
function with its formula in the docstring; the check bound to an env precomputes what it can
(zero vectors, bound lists) so the per-step path stays in a few hundred nanoseconds.

Example:
    >>> import gymnasium as gym
    >>> env = gym.make("Pendulum-v1")
    >>> obs, _ = env.reset(seed=0)
    >>> check = action_bounds().bind(env)
    >>> check({"action": np.array([3.0], np.float32)})  # 1 N·m above max_torque=2
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from operator import le
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from physlink_gym.invariants.core import (
    Invariant,
    Mode,
    NotApplicableError,
    Transition,
    _check_callable,
)

__all__ = [
    "PENDULUM_TOLERANCE",
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
    "pendulum_energy_residuals",
]

_FAST_LIST_MAX = 64  # up to this many dims, a bound check on a Python list beats numpy calls


# --------------------------------------------------------------------------- pure functions
def count_nonfinite(*values: Any) -> int:
    """Count the entries that are NaN or ±inf in ``values``.

    Arrays count element-wise; dicts, lists and tuples are walked; ints and bools are always
    finite; ``None`` or anything that is not a number counts as one non-finite entry.

    Example:
        >>> count_nonfinite(np.array([1.0, np.nan]), float("inf"), 3, {"v": [0.5, -np.inf]})
        3
    """
    return sum(_count_one(v) for v in values)


def _count_one(value: Any) -> int:
    if isinstance(value, np.ndarray):
        kind = value.dtype.kind
        if kind in "fc":
            return int(value.size - np.count_nonzero(np.isfinite(value)))
        if kind == "O":
            return sum(_count_one(v) for v in value.flat)
        return 0 if kind in "biu" else value.size
    if isinstance(value, (bool, int, np.integer, np.bool_)):
        return 0
    if isinstance(value, (float, np.floating)):
        return 0 if math.isfinite(value) else 1
    if isinstance(value, dict):
        return sum(_count_one(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_count_one(v) for v in value)
    try:
        return _count_one(np.asarray(value, dtype=np.complex128))
    except (TypeError, ValueError):
        return 1


def box_excess(x: Any, low: NDArray[Any], high: NDArray[Any]) -> float:
    """How far ``x`` lies outside the box ``[low, high]``; infinite bounds are ignored.

    ``residual = max(0, max_{i: high_i finite}(x_i − high_i), max_{i: low_i finite}(low_i − x_i))``.
    A NaN in a bounded dimension gives NaN; a shape different from ``low.shape`` gives ``inf``.

    Example:
        >>> low, high = np.array([-1.0, -np.inf]), np.array([1.0, 2.0])
        >>> box_excess(np.array([0.5, -9.0]), low, high)
        0.0
        >>> box_excess(np.array([1.5, 2.5]), low, high)
        0.5
        >>> box_excess(np.zeros(3), low, high)
        inf
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.shape != low.shape:
        return math.inf
    lo = np.isfinite(low)
    hi = np.isfinite(high)
    over = np.max(arr[hi] - high[hi], initial=0.0)
    under = np.max(low[lo] - arr[lo], initial=0.0)
    return float(np.max([over, under]))


def energy_balance_residual(energy_before: float, energy_after: float, work: float) -> float:
    """Energy-balance residual ``|E(s') − E(s) − W|`` (W: work done on the system in the step).

    Example:
        >>> energy_balance_residual(1.0, 1.5, 0.25)
        0.25
    """
    return abs(float(energy_after) - float(energy_before) - float(work))


def pendulum_energy_bound(
    g: float = 10.0, m: float = 1.0, l: float = 1.0, dt: float = 0.05,  # noqa: E741
    max_speed: float = 8.0, max_torque: float = 2.0,
) -> float:
    """Bound of :func:`pendulum_energy_residual` on steps where Pendulum-v1 does not clip speed.

    ``(m g l / 4)(max_speed · dt)² + (I / 2)(a_max · dt)²`` with ``I = m l² / 3`` and
    ``a_max = 3 g / (2 l) + 3 max_torque / (m l²)`` (see :func:`pendulum_energy_residual`).

    Example:
        >>> round(pendulum_energy_bound(), 5)  # Pendulum-v1 defaults
        0.58375
    """
    inertia = m * l * l / 3.0
    a_max = 3.0 * g / (2.0 * l) + 3.0 * max_torque / (m * l * l)
    return m * g * l / 4.0 * (max_speed * dt) ** 2 + inertia / 2.0 * (a_max * dt) ** 2


PENDULUM_TOLERANCE = 0.584
"""Default tolerance of :func:`pendulum_energy`: ``pendulum_energy_bound()`` rounded up (J)."""


def pendulum_energy_residual(
    obs: Any, next_obs: Any, torque: float, g: float = 10.0, m: float = 1.0, l: float = 1.0,  # noqa: E741
    exact: bool = False,
) -> float:
    """Energy residual of one Gymnasium Pendulum-v1 step from ``[cos θ, sin θ, ω]`` observations.

    The pole is a rod (``I = m l²/3``) with ``θ = 0`` upright, so ``E = ½ I ω² + ½ m g l cos θ``.
    The env's semi-implicit Euler step is ``ω' = ω + a·dt`` with ``I a = ½ m g l sin θ + u``, then
    ``θ' = θ + ω'·dt``. Writing ``Δθ = θ' − θ`` and ``Δω = ω' − ω``, it satisfies *exactly*

        ``½ I (ω'² − ω²) + ½ I Δω² = (½ m g l sin θ + u) Δθ``,

    hence ``E' − E − u Δθ = ½ m g l (cos θ' − cos θ + sin θ Δθ) − ½ I Δω²``. The default residual
    is ``|E' − E − u Δθ|`` (energy balance with the work of the applied torque); by Taylor's
    theorem it is at most ``(m g l / 4) Δθ² + (I / 2)(a dt)²`` (:func:`pendulum_energy_bound`,
    0.58375 J at the defaults). With ``exact=True`` the residual is the remainder of the exact
    identity, ``|½ I (ω'² − ω²) + ½ I Δω² − (½ m g l sin θ + u) Δθ|``, which is float round-off
    (~1e-6 J on float32 observations). Both break when the env clips ``ω'`` at ±``max_speed``.
    ``Δθ`` comes from the observed angles (wrapped to (−π, π]); ``torque`` is the applied
    (already clipped) torque.

    Example:
        >>> th = np.pi / 2  # horizontal, at rest, no torque: one step at dt = 0.05
        >>> w1 = 15.0 * 0.05; th1 = th + w1 * 0.05
        >>> o0, o1 = [np.cos(th), np.sin(th), 0.0], [np.cos(th1), np.sin(th1), w1]
        >>> round(pendulum_energy_residual(o0, o1, 0.0), 6)  # |5 (Δθ − sin Δθ) − ½ I Δω²|
        0.093706
        >>> pendulum_energy_residual(o0, o1, 0.0, exact=True) < 1e-12
        True
    """
    c0, s0, w0 = (float(v) for v in np.asarray(obs, dtype=np.float64).reshape(3))
    c1, s1, w1 = (float(v) for v in np.asarray(next_obs, dtype=np.float64).reshape(3))
    inertia = m * l * l / 3.0
    half_mgl = 0.5 * m * g * l
    dtheta = math.atan2(s1 * c0 - c1 * s0, c1 * c0 + s1 * s0)
    dkin = 0.5 * inertia * (w1 * w1 - w0 * w0)
    if exact:
        return abs(dkin + 0.5 * inertia * (w1 - w0) ** 2 - (half_mgl * s0 + torque) * dtheta)
    return abs(dkin + half_mgl * (c1 - c0) - torque * dtheta)


def pendulum_energy_residuals(
    obs: Any, next_obs: Any, torque: Any, g: float = 10.0, m: float = 1.0, l: float = 1.0,  # noqa: E741
    exact: bool = False,
) -> np.ndarray:
    """:func:`pendulum_energy_residual` of many transitions at once (rows of ``[M, 3]``).

    Example:
        >>> o0 = np.array([[0.0, 1.0, 0.0]]); o1 = np.array([[-0.0375, 0.9993, 0.75]])
        >>> bool(np.isclose(pendulum_energy_residuals(o0, o1, np.zeros(1))[0],
        ...                 pendulum_energy_residual(o0[0], o1[0], 0.0)))
        True
    """
    x0 = np.asarray(obs, np.float64).reshape(-1, 3)
    x1 = np.asarray(next_obs, np.float64).reshape(-1, 3)
    out = _pendulum_energy_math(x0, x1, np.asarray(torque, np.float64), np.arctan2,
                                g, m, l, exact)
    return np.asarray(out, np.float64)


def _pendulum_energy_math(x0: Any, x1: Any, torque: Any, atan2: Any, g: float, m: float,
                          l: float, exact: bool) -> Any:  # noqa: E741
    """The residual's arithmetic on ``[M, 3]`` rows: numpy arrays or torch tensors alike."""
    c0, s0, w0 = x0[:, 0], x0[:, 1], x0[:, 2]
    c1, s1, w1 = x1[:, 0], x1[:, 1], x1[:, 2]
    inertia = m * l * l / 3.0
    half_mgl = 0.5 * m * g * l
    dtheta = atan2(s1 * c0 - c1 * s0, c1 * c0 + s1 * s0)
    dkin = 0.5 * inertia * (w1 * w1 - w0 * w0)
    if exact:
        return abs(dkin + 0.5 * inertia * (w1 - w0) ** 2 - (half_mgl * s0 + torque) * dtheta)
    return abs(dkin + half_mgl * (c1 - c0) - torque * dtheta)


# --------------------------------------------------------------------------- bound checks
def _box_of(env: Any, attr: str, who: str) -> Any:
    space = getattr(env, attr, None)
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    if not isinstance(low, np.ndarray) or not isinstance(high, np.ndarray):
        raise NotApplicableError(
            got=f"{attr} {space!r} of {type(env.unwrapped).__name__}",
            expected=f"a gymnasium.spaces.Box {attr} for {who}",
            fix=f"drop {who} for this env, or register your own check with register_invariant",
        )
    return space


def _finite_test(space: Any) -> Callable[[Any], bool]:
    """A fast ``x -> all entries finite`` for values of ``space`` (fallback: count_nonfinite)."""
    shape = getattr(space, "shape", None)
    dtype = getattr(space, "dtype", None)
    if dtype is None or np.dtype(dtype).kind != "f" or shape is None or len(shape) != 1:
        return lambda x: _count_one(x) == 0
    zeros = np.zeros(shape, dtype=dtype)
    small = shape[0] <= _FAST_LIST_MAX

    def test(x: Any) -> bool:
        # A sum is non-finite when an entry is NaN/±inf (or on overflow: then count exactly);
        # x·0 is NaN iff an entry is NaN/±inf and never overflows.
        try:
            if small:
                return math.isfinite(sum(x.tolist())) or _count_one(x) == 0
            return math.isfinite(x.dot(zeros))
        except (AttributeError, TypeError, ValueError):
            return _count_one(x) == 0

    return test


def _nonfinite_rows(x: Any) -> np.ndarray:
    """Number of NaN/±inf entries in every row of ``x`` (float64, shape ``[M]``).

    A dict (a vector env's Dict observations: one ``[M, ...]`` array per key) counts over
    every key.
    """
    if isinstance(x, dict):
        return np.asarray(sum(_nonfinite_rows(v) for v in x.values()), np.float64)
    x = np.asarray(x, np.float64)
    count: np.ndarray = (~np.isfinite(x.reshape(x.shape[0], -1))).sum(axis=1)
    return count.astype(np.float64)


def _small_vector(space: Any) -> bool:
    shape = getattr(space, "shape", None)
    return shape is not None and len(shape) == 1 and shape[0] <= _FAST_LIST_MAX


class _FiniteCheck:
    """Bound :func:`finite`: ``obs`` is checked only on the first step after a reset."""

    def __init__(self, env: Any) -> None:
        obs_space = getattr(env, "observation_space", None)
        act_space = getattr(env, "action_space", None)
        self.obs_ok = _finite_test(obs_space)
        self.act_ok = _finite_test(act_space)
        self.fast = _small_vector(obs_space) and _small_vector(act_space)
        self.first = True

    def on_reset(self, env: Any, obs: Any) -> None:
        self.first = True

    def __call__(self, t: Transition) -> float:
        if self.fast and not self.first:
            # A sum is non-finite iff an entry is NaN/±inf, or on overflow: then count exactly.
            try:
                if (math.isfinite(t["reward"]) and math.isfinite(sum(t["next_obs"].tolist()))
                        and math.isfinite(sum(t["action"].tolist()))):
                    return 0.0
            except (AttributeError, TypeError, ValueError):
                pass
        return self._general(t)

    def batch(self, b: dict[str, Any]) -> np.ndarray:
        """Residuals of many transitions (arrays with a leading axis; ``first`` marks resets)."""
        first = np.asarray(b["first"], bool)
        try:  # the common case, all finite: one pass per array, no counting
            if isinstance(b["next_obs"], dict):
                raise TypeError  # a Dict observation: counted key by key below
            if (np.isfinite(b["next_obs"]).all() and np.isfinite(b["action"]).all()
                    and np.isfinite(b["reward"]).all()
                    and (not first.any() or np.isfinite(np.asarray(b["obs"])[first]).all())):
                return np.zeros(len(first))
        except TypeError:
            pass
        count = _nonfinite_rows(b["next_obs"]) + _nonfinite_rows(b["action"])
        count += ~np.isfinite(np.asarray(b["reward"], np.float64))
        return np.asarray(count + np.where(b["first"], _nonfinite_rows(b["obs"]), 0.0))

    def _general(self, t: Transition) -> float:
        reward, next_obs, action = t["reward"], t["next_obs"], t["action"]
        try:
            reward_ok = math.isfinite(reward)
        except TypeError:
            reward_ok = False
        first, self.first = self.first, False
        ok = reward_ok and self.obs_ok(next_obs) and self.act_ok(action)
        if ok and (not first or self.obs_ok(t["obs"])):
            return 0.0
        return float(count_nonfinite(reward, next_obs, action, t["obs"] if first else 0))


class _BoxCheck:
    """Bound :func:`box_excess` on one transition key, with a Python-list fast path."""

    def __init__(self, key: str, space: Any, check_obs_on_reset: bool) -> None:
        self.key = key
        self.low = np.asarray(space.low, dtype=np.float64)
        self.high = np.asarray(space.high, dtype=np.float64)
        self.shape = self.low.shape
        self.low_l: list[float] = self.low.ravel().tolist()
        self.high_l: list[float] = self.high.ravel().tolist()
        self.small = self.low.size <= _FAST_LIST_MAX
        self.flat = len(self.shape) == 1
        self.first = check_obs_on_reset
        self.check_obs_on_reset = check_obs_on_reset

    def on_reset(self, env: Any, obs: Any) -> None:
        self.first = self.check_obs_on_reset

    def __call__(self, t: Transition) -> float:
        if self.small and not self.first:
            # ±inf bounds accept everything; NaN fails every comparison: slow path.
            x = t[self.key]  # type: ignore[literal-required]
            try:
                if x.shape == self.shape:
                    v = x.tolist() if self.flat else x.ravel().tolist()
                    if all(map(le, self.low_l, v)) and all(map(le, v, self.high_l)):
                        return 0.0
            except AttributeError:
                pass
        return self._general(t)

    def batch(self, b: dict[str, Any]) -> np.ndarray:
        """Residuals of many transitions (arrays with a leading axis; ``first`` marks resets)."""
        r = self._excess_rows(b[self.key])
        first = np.asarray(b["first"], bool)
        if self.check_obs_on_reset and first.any():
            r0 = self._excess_rows(np.asarray(b["obs"])[first])
            r[first] = np.where(np.isnan(r0), r0, np.maximum(r[first], r0))
        return r

    def _excess_rows(self, x: Any) -> np.ndarray:
        """:func:`box_excess` of every row of ``x`` (inf for rows of the wrong shape)."""
        x = np.asarray(x)
        if x.shape[1:] != self.shape:
            return np.full(x.shape[0], math.inf)
        flat = x.reshape(x.shape[0], -1).astype(np.float64)
        low, high = self.low.ravel(), self.high.ravel()
        lo, hi = np.isfinite(low), np.isfinite(high)
        if lo.all() and hi.all():  # every bound finite: no column selection
            excess = np.maximum(flat - high, low - flat).max(axis=1, initial=-math.inf)
            return np.asarray(np.maximum(excess, 0.0))
        over = np.max(flat[:, hi] - high[hi], axis=1, initial=0.0)
        under = np.max(low[lo] - flat[:, lo], axis=1, initial=0.0)
        return np.asarray(np.maximum(over, under))

    def _inside(self, x: Any) -> bool:
        if type(x) is not np.ndarray or x.shape != self.shape:
            return False
        return bool((x >= self.low).all() and (x <= self.high).all())

    def _general(self, t: Transition) -> float:
        x = t[self.key]  # type: ignore[literal-required]
        r = 0.0 if self._inside(x) else box_excess(x, self.low, self.high)
        if self.first:
            self.first = False
            prev = t["obs"]
            r0 = 0.0 if self._inside(prev) else box_excess(prev, self.low, self.high)
            r = r0 if math.isnan(r0) else max(r, r0)
        return r


# --------------------------------------------------------------------------- factories
def finite(tolerance: float = 0.0, mode: Mode = "hard", *, name: str = "finite") -> Invariant:
    """Every entry of ``obs``, ``action``, ``reward`` and ``next_obs`` is finite.

    ``residual = count of NaN/±inf entries`` in (``next_obs``, ``action``, ``reward``, and ``obs``
    on the first step after a reset: later ``obs`` is the previous ``next_obs``, already checked).

    Example:
        >>> import gymnasium as gym
        >>> check = finite().bind(gym.make("Pendulum-v1"))
        >>> t = {"obs": np.full(3, np.nan, np.float32), "action": np.array([np.nan], np.float32),
        ...      "reward": float("inf"), "next_obs": np.zeros(3, np.float32)}
        >>> check(t)  # first step after a reset: 3 in obs, 1 in action, 1 in reward
        5.0
        >>> check(t)  # later steps: obs is the previous next_obs, already checked
        2.0
    """
    return Invariant(name=name, tolerance=tolerance, mode=mode, binder=_FiniteCheck,
                     description="obs, action, reward and next_obs are finite",
                     transition_only=True)


def obs_bounds(tolerance: float = 0.0, mode: Mode = "hard", *, name: str = "obs_bounds",
               key: str | None = None) -> Invariant:
    """``next_obs`` lies inside the env's observation Box: residual :func:`box_excess`.

    Infinite bounds are ignored (check NaN/inf with :func:`finite`); a wrong shape gives ``inf``.
    The reset observation is checked on the first step. With a ``Dict`` observation space every
    ``Box`` key is checked (the residual is the largest), or only ``key`` when given (a robot's
    ``"state"`` beside a camera image). NOT_APPLICABLE without a Box (or a Dict with ``key``).

    Example:
        >>> import gymnasium as gym
        >>> check = obs_bounds().bind(gym.make("Pendulum-v1"))  # |ω| <= 8
        >>> check({"obs": np.zeros(3), "next_obs": np.array([1.0, 0.0, 8.5], np.float32)})
        0.5
    """
    def bind(env: Any) -> _BoxCheck | _KeyedBoxCheck:
        space = getattr(env, "observation_space", None)
        if isinstance(space, gym.spaces.Dict):
            keys = [key] if key is not None else [
                k for k, v in space.spaces.items() if isinstance(v, gym.spaces.Box)]
            if key is not None and not isinstance(space.spaces.get(key), gym.spaces.Box):
                raise NotApplicableError(
                    got=f"{name}(key={key!r}) on a Dict observation space with "
                    f"{list(space.spaces)}",
                    expected=f"a Box under the key {key!r}",
                    fix="pass key= one of the Dict's Box keys, or leave it out to check them "
                    "all")
            if not keys:
                raise NotApplicableError(got=f"observation space {space}",
                                         expected=f"a Box key for {name}",
                                         fix=f"drop {name} for this env")
            return _KeyedBoxCheck({k: _BoxCheck("next_obs", space.spaces[k], True)
                                   for k in keys})
        if key is not None:
            raise NotApplicableError(
                got=f"{name}(key={key!r}) on the observation space {space!r}",
                expected="a Dict observation space", fix="leave key= out for a Box space")
        return _BoxCheck("next_obs", _box_of(env, "observation_space", name), True)

    what = f"next_obs[{key!r}]" if key is not None else "next_obs"
    return Invariant(name=name, tolerance=tolerance, mode=mode, binder=bind,
                     description=f"{what} inside the observation Box", transition_only=True)


class _KeyedBoxCheck:
    """:class:`_BoxCheck` per key of a Dict observation; the residual is the largest."""

    def __init__(self, checks: dict[str, _BoxCheck]) -> None:
        self.checks = checks

    def on_reset(self, env: Any, obs: Any) -> None:
        for check in self.checks.values():
            check.on_reset(env, obs)

    @staticmethod
    def _part(values: Any, key: str) -> Any:
        return values[key] if isinstance(values, dict) and key in values else values

    def __call__(self, t: Transition) -> float:
        worst = 0.0
        for key, check in self.checks.items():
            r = check({"next_obs": self._part(t["next_obs"], key),
                       "obs": self._part(t.get("obs"), key)})
            if math.isnan(r):
                return r
            worst = max(worst, r)
        return worst

    def batch(self, b: dict[str, Any]) -> np.ndarray:
        """Residuals of many transitions, key by key (the largest per row)."""
        rows = [check.batch({"next_obs": self._part(b["next_obs"], key),
                             "obs": self._part(b.get("obs"), key), "first": b["first"]})
                for key, check in self.checks.items()]
        return np.asarray(np.maximum.reduce(rows) if len(rows) > 1 else rows[0])  # NaN stays


def action_bounds(tolerance: float = 0.0, mode: Mode = "hard", *, name: str = "action_bounds",
                  ) -> Invariant:
    """``action`` lies inside the env's action Box: residual :func:`box_excess`.

    Infinite bounds are ignored; an action of the wrong shape gives ``inf``; NaN in a bounded
    dimension gives NaN (both are violations). NOT_APPLICABLE without a Box action space.

    Example:
        >>> import gymnasium as gym
        >>> check = action_bounds().bind(gym.make("Pendulum-v1"))
        >>> check({"action": np.array([-2.0], np.float32)}), check({"action": np.zeros(2)})
        (0.0, inf)
    """
    def bind(env: Any) -> _BoxCheck:
        return _BoxCheck("action", _box_of(env, "action_space", name), False)

    return Invariant(name=name, tolerance=tolerance, mode=mode, binder=bind,
                     description="action inside the action Box", transition_only=True)


def energy_balance(
    energy_fn: Callable[[Any], float], work_fn: Callable[[Transition], float],
    tolerance: float = 1e-6, mode: Mode = "soft", *, name: str = "energy_balance",
) -> Invariant:
    """Energy balance ``|E(next_obs) − E(obs) − W(transition)|`` for envs with known energy.

    ``energy_fn(obs) -> float`` is the system's total energy; ``work_fn(transition) -> float`` the
    work done on it during the step (actuation minus dissipation). See
    :func:`energy_balance_residual`.

    Example:
        >>> inv = energy_balance(lambda o: 0.5 * o[0] ** 2, lambda t: t["action"] * t.get("obs")[0])
        >>> inv.bind(None)({"obs": [1.0], "next_obs": [2.0], "action": 1.0})  # |2 − 0.5 − 1|
        0.5
    """
    _check_callable(name, energy_fn)
    _check_callable(name, work_fn)

    def residual(t: Transition) -> float:
        return energy_balance_residual(energy_fn(t["obs"]), energy_fn(t["next_obs"]), work_fn(t))

    return Invariant(name=name, fn=residual, tolerance=tolerance, mode=mode,
                     description="|E(s') - E(s) - W| for a user energy and work",
                     transition_only=True)


def pendulum_energy(
    tolerance: float = PENDULUM_TOLERANCE, mode: Mode = "soft", *, exact: bool = False,
    name: str = "pendulum_energy",
) -> Invariant:
    """Energy balance of Gymnasium's Pendulum-v1: :func:`pendulum_energy_residual`.

    The env's parameters (``g``, ``m``, ``l``, ``max_torque``) are read at bind time; the action
    is clipped to ±``max_torque`` as the env does. With the default dt the residual stays below
    ``pendulum_energy_bound()`` = 0.58375 J except on steps where the env clips ``|ω'|`` at 8, so
    the default tolerance flags exactly those (most of them, a built-in source of true
    violations). Pass ``exact=True`` (with e.g. ``tolerance=1e-4``) to check the exact discrete
    identity instead: then every clip step beyond round-off is a violation. NOT_APPLICABLE on
    other envs.

    Example:
        >>> import gymnasium as gym
        >>> env = gym.make("Pendulum-v1")
        >>> check = pendulum_energy().bind(env)
        >>> obs, _ = env.reset(seed=0)
        >>> action = np.array([1.0], np.float32)
        >>> next_obs, *_ = env.step(action)
        >>> check({"obs": obs, "next_obs": next_obs, "action": action}) < PENDULUM_TOLERANCE
        True
    """
    def bind(env: Any) -> Callable[[Transition], float]:
        base = getattr(env, "unwrapped", env)
        params = [getattr(base, k, None) for k in ("g", "m", "l", "max_torque")]
        shape = getattr(getattr(base, "observation_space", None), "shape", None)
        if shape != (3,) or not all(isinstance(p, (int, float)) for p in params):
            raise NotApplicableError(
                got=f"env {type(base).__name__} (no Pendulum-v1 parameters g, m, l, max_torque)",
                expected=f"Gymnasium's Pendulum-v1 for {name}",
                fix="use energy_balance(energy_fn, work_fn) for other envs",
            )
        g, m, length, max_torque = (float(p) for p in params)  # type: ignore[arg-type]

        def check(t: Transition) -> float:
            u = np.asarray(t["action"], dtype=np.float64).reshape(-1)[0]
            torque = float(np.clip(u, -max_torque, max_torque))
            return pendulum_energy_residual(t["obs"], t["next_obs"], torque, g, m, length, exact)

        def batch(b: dict[str, Any]) -> np.ndarray:
            u = np.asarray(b["action"], np.float64).reshape(len(b["action"]), -1)[:, 0]
            torque = np.clip(u, -max_torque, max_torque)
            return pendulum_energy_residuals(b["obs"], b["next_obs"], torque, g, m, length,
                                             exact)

        def torch_residual(b: dict[str, Any]) -> Any:  # differentiable (physics loss)
            import torch

            u = b["action"].reshape(b["action"].shape[0], -1)[:, 0]
            return _pendulum_energy_math(b["obs"], b["next_obs"],
                                         u.clamp(-max_torque, max_torque), torch.atan2,
                                         g, m, length, exact)

        check.batch = batch  # type: ignore[attr-defined]
        check.torch = torch_residual  # type: ignore[attr-defined]
        return check

    return Invariant(name=name, tolerance=tolerance, mode=mode, binder=bind,
                     description="Pendulum-v1 energy balance (clip steps violate)",
                     transition_only=True,
                     hint="Pendulum-v1 clips the angular speed at ±8 rad/s, which breaks the "
                     "energy identity on those steps: the env's own clipping, not a fault")
