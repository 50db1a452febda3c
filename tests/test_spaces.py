"""ObservationSpace / ActionSpace: factories, Box round trips, validation, data helpers."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from physlink_gym.errors import PhysLinkError, ValidationError
from physlink_gym.spaces import ActionSpace, ObservationSpace

INF = math.inf
# Module-local settings (never load a global profile: other test files share the process).
fast = settings(max_examples=60, deadline=None)

# float32-representable finite values, so bounds survive the float32 cast unchanged.
finite32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@st.composite
def pair(draw: st.DrawFn, allow_inf: bool = True) -> tuple[float, float]:
    a, b = sorted((draw(finite32), draw(finite32)))
    if allow_inf and draw(st.booleans()):
        a = -INF
    if allow_inf and draw(st.booleans()):
        b = INF
    return (a, b)


@st.composite
def dims_and_bounds(
    draw: st.DrawFn, allow_inf: bool = True
) -> tuple[int, list[tuple[float, float]]]:
    n = draw(st.integers(1, 8))
    return n, [draw(pair(allow_inf)) for _ in range(n)]


@st.composite
def boxes(draw: st.DrawFn) -> gym.spaces.Box:
    n, bounds = draw(dims_and_bounds())
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    low = np.array([b[0] for b in bounds], dtype=dtype)
    high = np.array([b[1] for b in bounds], dtype=dtype)
    return gym.spaces.Box(low=low, high=high, shape=(n,), dtype=dtype)


def assert_same_box(a: gym.spaces.Box, b: gym.spaces.Box) -> None:
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a.low, b.low)
    np.testing.assert_array_equal(a.high, b.high)
    assert a == b


# --- factories and round trips ---------------------------------------------------------------


@fast
@given(dims_and_bounds())
def test_action_continuous_to_box_matches_bounds_and_round_trips(db):
    n, bounds = db
    space = ActionSpace.continuous(n, bounds)
    box = space.to_gymnasium()
    assert isinstance(box, gym.spaces.Box)
    assert box.shape == (n,) and box.dtype == np.float32 and space.dims == n
    np.testing.assert_array_equal(box.low, np.array([b[0] for b in bounds], np.float32))
    np.testing.assert_array_equal(box.high, np.array([b[1] for b in bounds], np.float32))
    assert ActionSpace.from_gymnasium(box) == space
    assert hash(ActionSpace.from_gymnasium(box)) == hash(space)


@fast
@given(boxes())
def test_box_to_space_to_box_is_exact(box):
    for cls in (ActionSpace, ObservationSpace):
        space = cls.from_gymnasium(box)
        assert space.dims == box.shape[0]
        assert_same_box(space.to_gymnasium(), box)
        assert cls.from_gymnasium(space.to_gymnasium()) == space


@fast
@given(st.integers(1, 6), st.booleans(), st.data())
def test_proprioception_dims_layout_and_box(joints, velocity, data):
    dims = 2 * joints if velocity else joints
    bounds = data.draw(st.none() | st.lists(pair(), min_size=dims, max_size=dims))
    space = ObservationSpace.from_proprioception(
        joints, include_velocity=velocity, clip_bounds=bounds
    )
    assert space.dims == dims and space.joints == joints and space.include_velocity is velocity
    box = space.to_gymnasium()
    assert box.shape == (dims,) and box.dtype == np.float32
    if bounds is None:
        assert np.all(np.isneginf(box.low)) and np.all(np.isposinf(box.high))
    # A Box cannot carry the layout fields; everything else survives exactly.
    back = ObservationSpace.from_gymnasium(box)
    assert back == dataclasses.replace(space, joints=None, include_velocity=False)
    assert_same_box(back.to_gymnasium(), box)


def test_bounds_are_rounded_to_dtype_so_round_trips_are_exact():
    space = ActionSpace.continuous(1, [(0.1, 0.2)])
    assert space.low == (float(np.float32(0.1)),)
    assert ActionSpace.from_gymnasium(space.to_gymnasium()) == space


def test_float64_and_float16_boxes_keep_their_dtype():
    for dtype in (np.float64, np.float16):
        box = gym.spaces.Box(-1.5, 2.5, (3,), dtype)
        space = ObservationSpace.from_gymnasium(box)
        assert space.dtype == np.dtype(dtype).name
        assert_same_box(space.to_gymnasium(), box)


def test_numpy_integers_and_array_bounds_are_accepted():
    space = ActionSpace.continuous(np.int64(2), np.array([[-1.0, 1.0], [0.0, 2.0]]))
    assert space.dims == 2 and isinstance(space.dims, int)
    assert space.high == (1.0, 2.0)


def test_space_from_real_env():
    env = gym.make("Pendulum-v1")
    act = ActionSpace.from_gymnasium(env.action_space)
    obs = ObservationSpace.from_gymnasium(env.observation_space)
    assert (act.low, act.high) == ((-2.0,), (2.0,))
    assert obs.high == (1.0, 1.0, 8.0)
    env.close()


# --- immutability, equality, hashing, explain -------------------------------------------------


def test_spaces_are_frozen_hashable_and_compare_by_value():
    a = ObservationSpace.from_proprioception(2, clip_bounds=[(-1, 1)] * 2)
    b = ObservationSpace.from_proprioception(2, clip_bounds=[(-1.0, 1.0)] * 2)
    c = ObservationSpace.from_proprioception(2, clip_bounds=[(-1, 2)] * 2)
    assert a == b and hash(a) == hash(b) and a != c
    assert len({a, b, c}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.low = (0.0, 0.0)  # type: ignore[misc]
    # same bounds, different kind of space: not equal
    act = ActionSpace.continuous(2, [(-1, 1)] * 2)
    assert act != ObservationSpace.from_gymnasium(act.to_gymnasium())
    assert pickle.loads(pickle.dumps(a)) == a


@fast
@given(dims_and_bounds())
def test_explain_is_strict_json(db):
    n, bounds = db
    info = ActionSpace.continuous(n, bounds).explain()
    text = json.dumps(info, allow_nan=False)
    assert json.loads(text)["dims"] == n
    assert info["type"] == "ActionSpace"
    assert info["bounded"] == [math.isfinite(lo) and math.isfinite(hi) for lo, hi in bounds]
    assert info["low"] == [lo if math.isfinite(lo) else None for lo, _ in bounds]


def test_observation_explain_has_layout():
    info = ObservationSpace.from_proprioception(
        3, include_velocity=True, clip_bounds=[(-1, 1)] * 6, normalize=True
    ).explain()
    assert info["layout"] == ["q[0:3]", "qdot[3:6]"]
    assert info["joints"] == 3 and info["normalize"] is True
    assert ObservationSpace.from_gymnasium(gym.spaces.Box(0, 1, (2,))).explain()["layout"] is None


# --- data helpers ------------------------------------------------------------------------------


@fast
@given(dims_and_bounds(), st.integers(1, 4), st.data())
def test_clip_lands_inside_bounds(db, batch, data):
    n, bounds = db
    space = ActionSpace.continuous(n, bounds)
    x = np.array(
        data.draw(
            st.lists(st.lists(finite32, min_size=n, max_size=n), min_size=batch, max_size=batch)
        ),
        dtype=np.float32,
    )
    out = space.clip(x)
    assert out.shape == x.shape and out.dtype == np.float32
    low, high = np.array(space.low, np.float32), np.array(space.high, np.float32)
    assert np.all(out >= low) and np.all(out <= high)
    inside = (x >= low) & (x <= high)
    np.testing.assert_array_equal(out[inside], x[inside])


@fast
@given(dims_and_bounds(), st.data())
def test_scale_maps_bounds_to_unit_interval_and_unscale_inverts(db, data):
    n, bounds = db
    space = ActionSpace.continuous(n, bounds)
    x = np.array(data.draw(st.lists(finite32, min_size=n, max_size=n)), dtype=np.float64)
    bounded = np.array(space.bounded)
    low, high = np.array(space.low), np.array(space.high)
    nondegenerate = bounded & (high > low)
    np.testing.assert_allclose(space.scale(low)[nondegenerate], -1.0, atol=1e-9)
    np.testing.assert_allclose(space.scale(high)[nondegenerate], 1.0, atol=1e-9)
    y = space.scale(x)
    np.testing.assert_array_equal(y[~bounded], x[~bounded])  # unbounded dims pass through
    back = space.unscale(y)
    scale = np.maximum(np.abs(x), np.where(bounded, np.abs(high) + np.abs(low), 0.0)) + 1.0
    np.testing.assert_allclose(
        back[nondegenerate], x[nondegenerate], atol=float(np.max(scale)) * 1e-12
    )
    inside = space.clip(x)
    assert np.all(np.abs(space.scale(inside)[bounded]) <= 1.0 + 1e-12)


def test_scale_golden_values_dtype_and_degenerate_dim():
    space = ActionSpace.continuous(3, [(0, 10), (2, 2), (-INF, INF)])
    x = np.array([[0.0, 2.0, 7.0], [5.0, 2.0, -7.0], [10.0, 2.0, 0.0]], dtype=np.float32)
    y = space.scale(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [[-1, 0, 7], [0, 0, -7], [1, 0, 0]])
    np.testing.assert_array_equal(space.unscale(y), x)
    assert space.scale([5, 2, 3]).dtype == np.float64  # ints become float64
    assert np.isnan(space.clip([np.nan, 2.0, 0.0])[0])  # NaN is never clipped into range


def test_helpers_do_not_modify_input():
    space = ActionSpace.continuous(2, [(-1, 1)] * 2)
    x = np.array([3.0, -3.0])
    for fn in (space.clip, space.scale, space.unscale):
        fn(x)
    np.testing.assert_array_equal(x, [3.0, -3.0])


@pytest.mark.parametrize("shape", [(), (3,), (2, 3), (2, 1)])
def test_helpers_reject_wrong_last_axis(shape):
    space = ActionSpace.continuous(2, [(-1, 1)] * 2)
    for fn in (space.clip, space.scale, space.unscale):
        with pytest.raises(ValidationError, match=r"Got: an array of shape"):
            fn(np.zeros(shape))


# --- validation error paths --------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -3, True, False, 2.0, "3", None, np.bool_(True)])
def test_bad_dims_and_joints_name_the_value(bad):
    with pytest.raises(ValidationError, match=rf"Got: dims={bad!r}"):
        ActionSpace.continuous(bad, [(-1, 1)])
    with pytest.raises(ValidationError, match=rf"Got: joints={bad!r}"):
        ObservationSpace.from_proprioception(bad)


@pytest.mark.parametrize(
    ("bounds", "got"),
    [
        ((-1, 1), r"bounds=\(-1, 1\), not pairs"),
        (5, r"bounds=5"),
        ("ab", r"bounds='ab'"),
        ({"a": (0, 1)}, r"bounds=\{"),
        ([(-1, 1)], r"1 pairs in bounds"),
        ([(-1, 1), (0, 1), (0, 1)], r"3 pairs in bounds"),
        ([(-1, 1), (0, 1, 2)], r"bounds\[1\]=\(0, 1, 2\)"),
        ([(-1, 1), 3], r"bounds\[1\]=3"),
        ([(-1, 1), ("a", "b")], r"bounds\[1\]="),
        ([(-1, 1), (True, 2)], r"bounds\[1\]=\(True, 2\)"),
        ([(1, -1), (0, 1)], r"bounds\[0\]=\(1.0, -1.0\)"),
        ([(0, 1), (math.nan, 1)], r"bounds\[1\]=\(nan, 1.0\)"),
        ([(0, 1), (0, math.nan)], r"bounds\[1\]=\(0.0, nan\)"),
        ([(0, 1), (INF, INF)], r"bounds\[1\]=\(inf, inf\)"),
        ([(0, 1), (-INF, -INF)], r"bounds\[1\]=\(-inf, -inf\)"),
        ([(0, 1), (0, 1e39)], r"high\[1\]=1e\+39, which overflows float32"),
    ],
)
def test_bad_bounds_name_the_value(bounds, got):
    with pytest.raises(ValidationError, match=f"Got: {got}") as info:
        ActionSpace.continuous(2, bounds)
    assert "Expected:" in str(info.value) and "Fix:" in str(info.value)


def test_bad_clip_bounds_use_the_argument_name():
    with pytest.raises(ValidationError, match=r"Got: 1 pairs in clip_bounds.*2 \(min, max\)"):
        ObservationSpace.from_proprioception(1, include_velocity=True, clip_bounds=[(0, 1)])
    with pytest.raises(ValidationError, match=r"Got: clip_bounds\[0\]=\(2.0, 1.0\)"):
        ObservationSpace.from_proprioception(1, clip_bounds=[(2, 1)])


@pytest.mark.parametrize("flag", ["include_velocity", "normalize"])
def test_non_bool_flags_are_rejected(flag):
    with pytest.raises(ValidationError, match=rf"Got: {flag}=1 \(int\)"):
        ObservationSpace.from_proprioception(2, clip_bounds=[(0, 1)] * 4, **{flag: 1})


def test_normalize_needs_a_bounded_dim():
    with pytest.raises(ValidationError, match="normalize=True with no bounded dim"):
        ObservationSpace.from_proprioception(2, normalize=True)
    half_open = ObservationSpace.from_proprioception(
        2, clip_bounds=[(0, INF), (-1, 1)], normalize=True
    )
    assert half_open.bounded == (False, True)


@pytest.mark.parametrize(
    "space",
    [
        gym.spaces.Discrete(3),
        gym.spaces.Box(0, 1, (2, 2), np.float32),
        gym.spaces.Box(0, 1, (0,), np.float32),
        gym.spaces.Box(0, 10, (3,), np.int64),
        gym.spaces.MultiBinary(3),
        np.zeros(3),
        None,
    ],
)
def test_from_gymnasium_rejects_non_1d_float_boxes(space):
    for cls in (ActionSpace, ObservationSpace):
        with pytest.raises(ValidationError, match=r"Expected: a 1-D float gymnasium.spaces.Box"):
            cls.from_gymnasium(space)


@pytest.mark.parametrize(
    ("kwargs", "got"),
    [
        ({"low": (0.0,), "high": (1.0,), "dtype": "int32"}, r"dtype='int32'"),
        ({"low": (0.0,), "high": (1.0, 2.0)}, r"len\(low\)=1, len\(high\)=2"),
        ({"low": (), "high": ()}, r"len\(low\)=0"),
        ({"low": "ab", "high": (1.0,)}, r"low='ab'"),
        ({"low": (0.0,), "high": ("x",)}, r"high=\('x',\)"),
        ({"low": (0.0,), "high": (1.0,), "joints": 2}, r"1 dims for joints=2"),
        ({"low": (0.0,), "high": (1.0,), "include_velocity": True}, r"joints=None"),
    ],
)
def test_direct_construction_is_validated_too(kwargs, got):
    with pytest.raises(ValidationError, match=f"Got: {got}"):
        ObservationSpace(**kwargs)


def test_validation_errors_are_physlink_and_value_errors():
    with pytest.raises(ValueError) as info:
        ActionSpace.continuous(0, [])
    assert isinstance(info.value, PhysLinkError)
