"""Observation and action spaces: validated, immutable descriptions of 1-D float vectors.

A space is a per-dimension ``(low, high)`` box with a float dtype. Bounds are stored as tuples of
Python floats rounded to the dtype at construction, so spaces are frozen, hashable and
equality-comparable, and round trips through :class:`gymnasium.spaces.Box` are exact. An infinite
bound means "unbounded on that side".

The helpers :meth:`clip`, :meth:`scale` and :meth:`unscale` apply a space to data of shape
``[..., dims]``; they are pure (they never modify their input).

Example:
    >>> import numpy as np
    >>> act = ActionSpace.continuous(2, [(-2.0, 2.0), (0.0, 1.0)])
    >>> box = act.to_gymnasium()
    >>> act.dims, box.shape, box.dtype
    (2, (2,), dtype('float32'))
    >>> ActionSpace.from_gymnasium(box) == act
    True
    >>> act.scale(np.array([2.0, 0.25])).tolist()
    [1.0, -0.5]
    >>> obs = ObservationSpace.from_proprioception(3, include_velocity=True)
    >>> obs.dims, float(obs.to_gymnasium().high[0])
    (6, inf)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from physlink_gym.errors import ValidationError

__all__ = [
    "ActionSpace", "ObservationSpace", "box_to_unit", "discrete_to_one_hot",
    "one_hot_to_discrete", "unit_to_box",
]

FloatArray = npt.NDArray[np.floating[Any]]
_S = TypeVar("_S", bound="_BoxSpace")
_DTYPES = ("float16", "float32", "float64")


def box_to_unit(x: npt.ArrayLike, low: npt.ArrayLike, high: npt.ArrayLike) -> FloatArray:
    """Map Box values affinely from ``[low, high]`` to ``[-1, 1]``, clipped (float32).

    The one conversion from env actions to a policy's unit box in physlink_gym (DreamerV3's
    policy, its ``fit`` and its world-model plots use it). A dimension with ``low == high`` has
    one value and maps to 0.

    Example:
        >>> box_to_unit([[0.0, 1.0], [4.0, 1.0]], [0.0, 1.0], [4.0, 1.0]).tolist()
        [[-1.0, 0.0], [1.0, 0.0]]
    """
    lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
    half, mid = (hi - lo) / 2.0, (hi + lo) / 2.0
    diff = np.asarray(x, np.float64) - mid
    unit = np.divide(diff, half, out=np.zeros_like(diff), where=half > 0)
    return np.clip(unit, -1.0, 1.0).astype(np.float32)


def unit_to_box(y: npt.ArrayLike, low: npt.ArrayLike, high: npt.ArrayLike,
                dtype: npt.DTypeLike = np.float32) -> FloatArray:
    """Inverse of :func:`box_to_unit`: ``[-1, 1]`` (clipped first) to ``[low, high]``.

    The result is clipped to the bounds again after the arithmetic, so rounding never puts an
    action a hair outside the Box (which an ``action_bounds`` invariant would flag).

    Example:
        >>> unit_to_box([[-1.0], [0.5], [3.0]], [0.0], [4.0]).tolist()
        [[0.0], [3.0], [4.0]]
    """
    lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
    unit = np.clip(np.asarray(y, np.float64), -1.0, 1.0)
    box = np.clip(unit * ((hi - lo) / 2.0) + (hi + lo) / 2.0, lo, hi)
    return box.astype(dtype)


def discrete_to_one_hot(index: npt.ArrayLike, n: int, start: int = 0) -> FloatArray:
    """One-hot rows ``[N, n]`` of Discrete actions ``start .. start + n - 1`` (clipped).

    Example:
        >>> discrete_to_one_hot([[2], [1]], n=2, start=1).tolist()
        [[0.0, 1.0], [1.0, 0.0]]
    """
    flat = np.asarray(index, np.float64).reshape(np.shape(index)[0] if np.ndim(index) else 1, -1)
    rows = np.clip(np.rint(flat[:, 0]).astype(np.int64) - int(start), 0, int(n) - 1)
    return np.eye(int(n), dtype=np.float32)[rows]


def one_hot_to_discrete(one_hot: npt.ArrayLike, start: int = 0) -> npt.NDArray[np.int64]:
    """Inverse of :func:`discrete_to_one_hot`: ``argmax + start`` per row.

    Example:
        >>> one_hot_to_discrete([[0.0, 1.0], [1.0, 0.0]], start=1).tolist()
        [2, 1]
    """
    return np.asarray(np.argmax(one_hot, axis=-1) + int(start), dtype=np.int64)


def _check_count(name: str, value: object) -> int:
    """Return ``value`` as an int if it is an integer >= 1 (bools are rejected)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        if int(value) >= 1:
            return int(value)
    raise ValidationError(
        got=f"{name}={value!r} ({type(value).__name__})",
        expected=f"{name} as an int >= 1 (bool is not accepted)",
        fix=f"pass a positive integer, e.g. {name}=3",
    )


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValidationError(
            got=f"{name}={value!r} ({type(value).__name__})",
            expected=f"{name} as a bool",
            fix=f"pass {name}=True or {name}=False",
        )
    return bool(value)


def _reals(value: object) -> list[float] | None:
    """Return ``value`` as a list of floats, or None if it is not a sequence of real numbers."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        return None
    items = list(value)
    if not all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in items):
        return None
    return [float(v) for v in items]


def _parse_bounds(
    bounds: object, dims: int, name: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Validate ``bounds`` (``dims`` pairs of ``(min, max)``) and split them into low and high."""
    expected = f"{name} as a list of {dims} (min, max) pairs of real numbers"
    fix = f"pass e.g. {name}=[(-1.0, 1.0)] * {dims} (-inf/inf for an unbounded side)"
    if isinstance(bounds, (str, bytes, Mapping)) or not isinstance(bounds, Iterable):
        raise ValidationError(got=f"{name}={bounds!r}", expected=expected, fix=fix)
    pairs = list(bounds)
    if _reals(pairs) is not None and pairs:
        raise ValidationError(got=f"{name}={bounds!r}, not pairs", expected=expected, fix=fix)
    if len(pairs) != dims:
        raise ValidationError(got=f"{len(pairs)} pairs in {name}", expected=expected, fix=fix)
    low: list[float] = []
    high: list[float] = []
    for i, pair in enumerate(pairs):
        values = _reals(pair)
        if values is None or len(values) != 2:
            raise ValidationError(got=f"{name}[{i}]={pair!r}", expected=expected, fix=fix)
        _check_pair(f"{name}[{i}]", values[0], values[1])
        low.append(values[0])
        high.append(values[1])
    return tuple(low), tuple(high)


def _check_pair(name: str, lo: float, hi: float) -> None:
    if math.isnan(lo) or math.isnan(hi) or lo > hi or lo == math.inf or hi == -math.inf:
        raise ValidationError(
            got=f"{name}=({lo!r}, {hi!r})",
            expected="min <= max, no NaN, min < inf and max > -inf",
            fix="fix that pair, using -inf/inf for an unbounded side",
        )


def _canonical(value: object, dtype: str, name: str) -> tuple[float, ...]:
    """Round ``value`` to ``dtype`` so that a Box built from it gives it back exactly."""
    values = _reals(value)
    if values is None:
        raise ValidationError(
            got=f"{name}={value!r}",
            expected=f"{name} as a sequence of real numbers",
            fix=f"pass {name} as a tuple of floats",
        )
    exact = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):
        rounded = exact.astype(dtype)
    overflow = np.flatnonzero(np.isfinite(exact) & ~np.isfinite(rounded))
    if overflow.size:
        raise ValidationError(
            got=f"{name}[{overflow[0]}]={values[overflow[0]]!r}, which overflows {dtype}",
            expected=f"bounds representable in {dtype}",
            fix="use -inf/inf for an unbounded side, or a smaller finite bound",
        )
    return tuple(float(v) for v in rounded)


class _Arrays(NamedTuple):
    low: FloatArray
    high: FloatArray
    bounded: npt.NDArray[np.bool_]  # both bounds finite: the dims that scale() maps
    mid: FloatArray  # centre of bounded dims, 0 elsewhere
    half: FloatArray  # half-width of bounded dims (0 where low == high), 1 elsewhere


@lru_cache(maxsize=512)
def _as_arrays(low: tuple[float, ...], high: tuple[float, ...]) -> _Arrays:
    """Read-only float64 arrays derived from the bounds (cached: spaces are immutable)."""
    lo = np.asarray(low, dtype=np.float64)
    hi = np.asarray(high, dtype=np.float64)
    bounded = np.isfinite(lo) & np.isfinite(hi)
    mid = np.where(bounded, lo, 0.0) / 2.0 + np.where(bounded, hi, 0.0) / 2.0
    half = np.where(bounded, hi, 1.0) / 2.0 - np.where(bounded, lo, -1.0) / 2.0
    arrays = _Arrays(lo, hi, bounded, mid, half)
    for array in arrays:
        array.setflags(write=False)
    return arrays


@dataclass(frozen=True)
class _BoxSpace:
    """Shared implementation: a 1-D float box with per-dimension ``(low, high)``."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValidationError(
                got=f"dtype={self.dtype!r}",
                expected=f"one of {', '.join(_DTYPES)}",
                fix='pass dtype="float32"',
            )
        low = _canonical(self.low, self.dtype, "low")
        high = _canonical(self.high, self.dtype, "high")
        if len(low) == 0 or len(low) != len(high):
            raise ValidationError(
                got=f"len(low)={len(low)}, len(high)={len(high)}",
                expected="low and high of the same length >= 1",
                fix="pass one (low, high) value per dimension",
            )
        for i, (lo, hi) in enumerate(zip(low, high, strict=True)):
            _check_pair(f"bounds[{i}]", lo, hi)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @classmethod
    def from_gymnasium(cls: type[_S], box: Any) -> _S:
        """Build the space of a 1-D float :class:`gymnasium.spaces.Box`, keeping its dtype.

        Raises:
            ValidationError: If ``box`` is not a 1-D float Box (e.g. a Discrete space).

        Example:
            >>> import gymnasium as gym
            >>> space = ObservationSpace.from_gymnasium(gym.make("Pendulum-v1").observation_space)
            >>> space.dims, space.high
            (3, (1.0, 1.0, 8.0))
        """
        from gymnasium.spaces import Box

        dtype = getattr(box, "dtype", None)
        is_float = dtype is not None and np.issubdtype(dtype, np.floating)
        if not isinstance(box, Box) or len(box.shape) != 1 or box.shape[0] < 1 or not is_float:
            raise ValidationError(
                got=f"{box!r} ({type(box).__name__})",
                expected="a 1-D float gymnasium.spaces.Box with >= 1 dim, e.g. "
                "Box(-1, 1, (3,), float32)",
                fix=f"flatten the space (gymnasium.wrappers.FlattenObservation) or build the "
                f"{cls.__name__} with its factory",
            )
        return cls(tuple(map(float, box.low)), tuple(map(float, box.high)), str(np.dtype(dtype)))

    @property
    def dims(self) -> int:
        """Number of dimensions of the vector."""
        return len(self.low)

    @property
    def _arrays(self) -> _Arrays:
        return _as_arrays(self.low, self.high)

    @property
    def bounded(self) -> tuple[bool, ...]:
        """Per dimension, whether both bounds are finite (only those dims are scaled)."""
        return tuple(bool(b) for b in self._arrays.bounded)

    def to_gymnasium(self) -> Any:
        """Return the equivalent :class:`gymnasium.spaces.Box` (shape ``(dims,)``)."""
        from gymnasium.spaces import Box

        low, high = self._arrays.low, self._arrays.high
        dtype: np.dtype[np.floating[Any]] = np.dtype(self.dtype)
        return Box(low=low.astype(dtype), high=high.astype(dtype), dtype=dtype)

    def _data(self, x: npt.ArrayLike) -> FloatArray:
        arr = np.asarray(x)
        if arr.ndim == 0 or arr.shape[-1] != self.dims:
            raise ValidationError(
                got=f"an array of shape {arr.shape}",
                expected=f"shape [..., {self.dims}] for this {type(self).__name__}",
                fix=f"pass data whose last axis has {self.dims} entries",
            )
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
        return arr

    def clip(self, x: npt.ArrayLike) -> FloatArray:
        """Clip ``x`` (shape ``[..., dims]``) into the bounds; NaN stays NaN.

        Float input keeps its dtype; other input becomes float64.

        Example:
            >>> space = ActionSpace.continuous(2, [(-1.0, 1.0), (-float("inf"), 0.0)])
            >>> space.clip([[3.0, 5.0], [-3.0, -7.0]]).tolist()
            [[1.0, 0.0], [-1.0, -7.0]]
        """
        arr = self._data(x)
        return np.clip(arr, self._arrays.low, self._arrays.high).astype(arr.dtype, copy=False)

    def scale(self, x: npt.ArrayLike) -> FloatArray:
        """Map bounded dims affinely from ``[low, high]`` to ``[-1, 1]``; others pass through.

        Values outside the bounds map outside ``[-1, 1]`` (call :meth:`clip` first to prevent
        that). A dim with ``low == high`` maps to 0. Float input keeps its dtype.

        Example:
            >>> space = ObservationSpace.from_proprioception(2, clip_bounds=[(0, 10), (-1, 1)])
            >>> space.scale([[0.0, 0.5], [10.0, -1.0]]).tolist()
            [[-1.0, 0.5], [1.0, -1.0]]
        """
        arr = self._data(x)
        a = self._arrays
        diff = np.asarray(arr - a.mid, dtype=np.float64)
        out = np.divide(diff, a.half, out=np.zeros_like(diff), where=a.half > 0)
        return out.astype(arr.dtype, copy=False)

    def unscale(self, y: npt.ArrayLike) -> FloatArray:
        """Inverse of :meth:`scale`: map bounded dims from ``[-1, 1]`` back to ``[low, high]``.

        Example:
            >>> space = ActionSpace.continuous(1, [(0.0, 4.0)])
            >>> space.unscale([-1.0]).tolist(), space.unscale([[0.0], [0.5]]).tolist()
            ([0.0], [[2.0], [3.0]])
        """
        arr = self._data(y)
        a = self._arrays
        return (arr * a.half + a.mid).astype(arr.dtype, copy=False)

    def explain(self) -> dict[str, Any]:
        """Describe the space as a JSON-serialisable dict (infinite bounds become ``None``)."""

        def _json(values: tuple[float, ...]) -> list[float | None]:
            return [v if math.isfinite(v) else None for v in values]

        n_bounded = sum(self.bounded)
        return {
            "type": type(self).__name__,
            "dims": self.dims,
            "dtype": self.dtype,
            "low": _json(self.low),
            "high": _json(self.high),
            "bounded": list(self.bounded),
            "summary": f"{self.dims}-dim {self.dtype} vector, {n_bounded} bounded dims "
            "(null bound = unbounded)",
        }


@dataclass(frozen=True)
class ObservationSpace(_BoxSpace):
    """A 1-D float observation vector.

    Attributes:
        low: Lower bound per dim (``-inf`` where unbounded).
        high: Upper bound per dim (``inf`` where unbounded).
        dtype: ``"float32"`` (default), ``"float16"`` or ``"float64"``.
        joints: Number of joints when built by :meth:`from_proprioception`, else ``None``.
        include_velocity: Whether dims ``[joints:2*joints]`` are joint velocities.
        normalize: A request to consumers to feed observations through :meth:`scale`.

    ``from_gymnasium(box).to_gymnasium()`` equals ``box`` for every 1-D float Box, and
    ``from_gymnasium(space.to_gymnasium())`` has the same bounds and dtype as ``space``; only the
    proprioceptive layout fields (``joints``, ``include_velocity``, ``normalize``), which a Box
    cannot carry, fall back to their defaults.
    """

    joints: int | None = None
    include_velocity: bool = False
    normalize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for flag in ("include_velocity", "normalize"):
            object.__setattr__(self, flag, _check_flag(flag, getattr(self, flag)))
        if self.joints is not None or self.include_velocity:
            joints = _check_count("joints", self.joints)
            object.__setattr__(self, "joints", joints)
            want = 2 * joints if self.include_velocity else joints
            if self.dims != want:
                raise ValidationError(
                    got=f"{self.dims} dims for joints={joints}, "
                    f"include_velocity={self.include_velocity}",
                    expected=f"{want} dims",
                    fix="build the space with ObservationSpace.from_proprioception",
                )
        if self.normalize and not any(self.bounded):
            raise ValidationError(
                got="normalize=True with no bounded dim",
                expected="finite (min, max) bounds for the dims to normalise",
                fix="pass clip_bounds, or normalize=False",
            )

    @classmethod
    def from_proprioception(
        cls,
        joints: int,
        include_velocity: bool = False,
        clip_bounds: Iterable[tuple[float, float]] | None = None,
        normalize: bool = False,
    ) -> ObservationSpace:
        """Build the space of joint positions (then, optionally, joint velocities).

        Args:
            joints: Number of joints, an int >= 1.
            include_velocity: Append one velocity per joint (``dims = 2 * joints``).
            clip_bounds: One ``(min, max)`` pair per dim, or ``None`` for unbounded dims.
            normalize: Ask consumers to scale observations to ``[-1, 1]``; needs at least one
                bounded dim.

        Returns:
            The validated space.

        Raises:
            ValidationError: On a bad ``joints``, flag, or ``clip_bounds`` value.

        Example:
            >>> space = ObservationSpace.from_proprioception(
            ...     2, include_velocity=True, clip_bounds=[(-3.14, 3.14)] * 2 + [(-10, 10)] * 2
            ... )
            >>> space.dims, space.explain()["layout"]
            (4, ['q[0:2]', 'qdot[2:4]'])
        """
        n = _check_count("joints", joints)
        velocity = _check_flag("include_velocity", include_velocity)
        norm = _check_flag("normalize", normalize)
        dims = 2 * n if velocity else n
        if clip_bounds is None:
            low, high = (-math.inf,) * dims, (math.inf,) * dims
        else:
            low, high = _parse_bounds(clip_bounds, dims, "clip_bounds")
        return cls(low, high, joints=n, include_velocity=velocity, normalize=norm)

    def explain(self) -> dict[str, Any]:
        """Describe the space as a JSON-serialisable dict (infinite bounds become ``None``)."""
        info = super().explain()
        layout: list[str] | None = None
        if self.joints is not None:
            n = self.joints
            layout = [f"q[0:{n}]"] + ([f"qdot[{n}:{2 * n}]"] if self.include_velocity else [])
        info.update(
            joints=self.joints,
            include_velocity=self.include_velocity,
            normalize=self.normalize,
            layout=layout,
        )
        return info


@dataclass(frozen=True)
class ActionSpace(_BoxSpace):
    """A 1-D float (continuous) action vector.

    Attributes:
        low: Lower bound per dim (``-inf`` where unbounded).
        high: Upper bound per dim (``inf`` where unbounded).
        dtype: ``"float32"`` (default), ``"float16"`` or ``"float64"``.

    ``from_gymnasium(space.to_gymnasium()) == space`` holds for every ActionSpace, and
    ``from_gymnasium(box).to_gymnasium()`` equals ``box`` for every 1-D float Box.
    """

    @classmethod
    def continuous(cls, dims: int, bounds: Iterable[tuple[float, float]]) -> ActionSpace:
        """Build a continuous action space from one ``(min, max)`` pair per dim.

        Args:
            dims: Number of action dims, an int >= 1.
            bounds: ``dims`` pairs ``(min, max)``; ``-inf``/``inf`` for an unbounded side.

        Returns:
            The validated space.

        Raises:
            ValidationError: On a bad ``dims`` or ``bounds`` value.

        Example:
            >>> ActionSpace.continuous(2, [(-1, 1)] * 2).to_gymnasium()
            Box(-1.0, 1.0, (2,), float32)
            >>> ActionSpace.continuous(2, [(1, -1)] * 2)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            physlink_gym.errors.ValidationError: Got: bounds[0]=(1.0, -1.0). Expected: ...
        """
        n = _check_count("dims", dims)
        low, high = _parse_bounds(bounds, n, "bounds")
        return cls(low, high)
