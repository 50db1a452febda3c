"""Built-in invariants: known answers, fast paths against the pure formulas, Pendulum energy."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from physlink_gym import invariants as inv
from physlink_gym.errors import ConfigurationError
from physlink_gym.invariants import NotApplicableError

G, M, L, DT = 10.0, 1.0, 1.0, 0.05
INERTIA = M * L * L / 3


class VecEnv64(gym.Env):
    """A float64 Box env with mixed infinite bounds (for the bound and overflow paths)."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(
            np.array([-1.0, -np.inf, 0.0]), np.array([1.0, 5.0, np.inf]), dtype=np.float64)
        self.action_space = gym.spaces.Box(
            np.array([-1.0, -np.inf]), np.array([np.inf, 2.0]), dtype=np.float64)


def transition(**kw):
    base = {"obs": np.zeros(3), "action": np.zeros(2), "reward": 0.0, "next_obs": np.zeros(3)}
    base.update(kw)
    return base


# ------------------------------------------------------------------ pure functions
def test_count_nonfinite_known_answers():
    assert inv.count_nonfinite(np.array([1.0, np.nan, np.inf]), -np.inf, 2, True) == 3
    assert inv.count_nonfinite({"a": [1.0, float("nan")], "b": (np.float32(np.inf),)}) == 2
    assert inv.count_nonfinite(np.arange(5), np.array([1 + 2j, complex("nan")])) == 1
    assert inv.count_nonfinite(None) == 1
    assert inv.count_nonfinite("not a number") == 1


@pytest.mark.parametrize(("x", "expected"), [
    ([0.5, -9.0, 3.0], 0.0),      # inside; -9 is unbounded below in dim 1
    ([1.5, 4.0, 0.0], 0.5),       # 0.5 above high[0]
    ([0.0, 7.0, -2.5], 2.5),      # max(7-5, 0-(-2.5)) = 2.5
    ([0.0, -np.inf, np.inf], 0.0),  # ±inf in unbounded directions are ignored
])
def test_box_excess_known_answers(x, expected):
    low, high = np.array([-1.0, -np.inf, 0.0]), np.array([1.0, 5.0, np.inf])
    assert inv.box_excess(np.array(x), low, high) == expected


def test_box_excess_nan_and_shape():
    low, high = np.array([-1.0, -np.inf]), np.array([1.0, np.inf])
    assert math.isnan(inv.box_excess(np.array([np.nan, 0.0]), low, high))
    assert inv.box_excess(np.array([0.0, np.nan]), low, high) == 0.0  # fully unbounded dim
    assert inv.box_excess(np.zeros(3), low, high) == math.inf
    assert inv.box_excess(0.0, low, high) == math.inf


@given(st.lists(st.floats(-10, 10), min_size=3, max_size=3))
@settings(max_examples=60, deadline=None)
def test_bound_check_fast_path_matches_formula(values):
    env = VecEnv64()
    check = inv.obs_bounds().bind(env)
    check.on_reset(env, np.zeros(3))
    check(transition())  # consume the first-step check of the reset observation
    x = np.array(values)
    low, high = env.observation_space.low, env.observation_space.high
    brute = max([0.0] + [x[i] - high[i] for i in range(3) if np.isfinite(high[i])]
                + [low[i] - x[i] for i in range(3) if np.isfinite(low[i])])
    assert check(transition(next_obs=x)) == pytest.approx(brute)


def test_energy_balance_residual_known_answer():
    assert inv.energy_balance_residual(2.0, 3.5, 1.0) == 0.5
    assert inv.energy_balance_residual(2.0, 3.5, 1.5) == 0.0


# ------------------------------------------------------------------ finite
def test_finite_counts_and_first_step_obs():
    env = gym.make("Pendulum-v1")
    check = inv.finite().bind(env)
    bad_obs = np.array([np.nan, 0.0, np.inf], np.float32)
    clean = transition(obs=bad_obs, action=np.zeros(1, np.float32),
                       next_obs=np.zeros(3, np.float32))
    assert check(clean) == 2.0       # the reset observation is checked on the first step
    assert check(clean) == 0.0       # afterwards obs is the previous next_obs: not re-counted
    check.on_reset(env, bad_obs)
    assert check(clean) == 2.0       # re-armed by on_reset
    nan_all = transition(obs=np.zeros(3, np.float32), action=np.array([np.nan], np.float32),
                         reward=float("-inf"), next_obs=np.full(3, np.nan, np.float32))
    assert check(nan_all) == 5.0


def test_finite_large_values_are_not_flagged():
    # sum() of these overflows to inf: the fast path must fall back to an exact count.
    check = inv.finite().bind(VecEnv64())
    big = np.full(3, 1e308)
    check(transition())
    assert check(transition(next_obs=big, action=np.full(2, 1e308))) == 0.0
    assert check(transition(next_obs=np.array([1e308, 1e308, np.nan]))) == 1.0


def test_finite_handles_non_array_values():
    check = inv.finite().bind(gym.make("CartPole-v1"))
    t = transition(obs=[0.0, 1.0], action=1, reward=1.0, next_obs={"a": [np.nan, np.inf]})
    assert check(t) == 2.0


# ------------------------------------------------------------------ bounds
def test_action_bounds_known_answers_on_pendulum():
    check = inv.action_bounds().bind(gym.make("Pendulum-v1"))  # max_torque = 2
    assert check({"action": np.array([3.0], np.float32)}) == 1.0
    assert check({"action": np.array([-2.5], np.float32)}) == 0.5
    assert check({"action": np.array([2.0], np.float32)}) == 0.0
    assert check({"action": np.array([0.0, 0.0])}) == math.inf  # wrong shape
    assert check({"action": [1.0]}) == 0.0                       # a list is converted
    assert math.isnan(check({"action": np.array([np.nan], np.float32)}))


def test_action_bounds_ignore_infinite_bounds():
    check = inv.action_bounds().bind(VecEnv64())  # low=[-1, -inf], high=[inf, 2]
    assert check({"action": np.array([1e9, -1e9])}) == 0.0
    assert check({"action": np.array([np.inf, -np.inf])}) == 0.0
    assert check({"action": np.array([-3.0, 2.5])}) == 2.0


def test_obs_bounds_checks_reset_obs_on_first_step():
    env = gym.make("Pendulum-v1")  # |omega| <= 8
    check = inv.obs_bounds().bind(env)
    ok, high = np.array([1.0, 0.0, 1.0], np.float32), np.array([1.0, 0.0, 9.5], np.float32)
    assert check({"obs": high, "next_obs": ok}) == 1.5  # first step: the reset obs counts
    assert check({"obs": high, "next_obs": ok}) == 0.0
    assert check({"obs": ok, "next_obs": np.array([1.0, 0.0, -8.25], np.float32)}) == 0.25


def test_bounds_not_applicable_without_box():
    with pytest.raises(NotApplicableError, match="Box"):
        inv.action_bounds().bind(gym.make("CartPole-v1"))


# ------------------------------------------------------------------ energy_balance
def test_energy_balance_spring_known_answer():
    # E = x²/2; W = a·x. From x=1 to x=2 with a=1: |2 − 0.5 − 1| = 0.5
    check = inv.energy_balance(lambda o: 0.5 * o[0] ** 2, lambda t: t["action"] * t["obs"][0],
                               tolerance=0.1).bind(None)
    assert check({"obs": [1.0], "next_obs": [2.0], "action": 1.0}) == 0.5
    assert check({"obs": [1.0], "next_obs": [2.0], "action": 1.5}) == 0.0


def test_energy_balance_validates_callables():
    with pytest.raises(ConfigurationError, match="callable"):
        inv.energy_balance("not callable", lambda t: 0.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="one positional"):
        inv.energy_balance(lambda: 0.0, lambda t: 0.0)  # type: ignore[arg-type, misc]


# ------------------------------------------------------------------ pendulum energy
def pend_obs(theta, omega):
    return np.array([math.cos(theta), math.sin(theta), omega])


def pend_step(theta, omega, u, max_speed=8.0):
    w1 = omega + (3 * G / (2 * L) * math.sin(theta) + 3.0 / (M * L * L) * u) * DT
    w1 = min(max(w1, -max_speed), max_speed)
    return theta + w1 * DT, w1


def test_pendulum_bound_golden():
    assert inv.pendulum_energy_bound() == pytest.approx(0.58375, abs=1e-12)
    assert inv.pendulum_energy_bound() <= inv.PENDULUM_TOLERANCE < 0.5840001


def test_pendulum_residual_horizontal_drop_golden():
    # From rest at theta = pi/2 with u = 0: omega' = 0.75, dtheta = 0.0375.
    th1, w1 = pend_step(math.pi / 2, 0.0, 0.0)
    r = inv.pendulum_energy_residual(pend_obs(math.pi / 2, 0.0), pend_obs(th1, w1), 0.0)
    expected = abs(5.0 * (math.sin(0.0375) - 0.0375) + INERTIA / 2 * 0.75 ** 2)
    assert r == pytest.approx(expected, rel=1e-9)
    assert r == pytest.approx(0.0937059, abs=1e-6)


def test_pendulum_clip_step_golden():
    # omega' would be 7.9 + 21 * 0.05 = 8.95 but is clipped to 8: the exact identity misses
    # I * omega' * (8.95 - 8) = (1/3) * 8 * 0.95 = 2.5333 J.
    th1, w1 = pend_step(math.pi / 2, 7.9, 2.0)
    o0, o1 = pend_obs(math.pi / 2, 7.9), pend_obs(th1, w1)
    assert inv.pendulum_energy_residual(o0, o1, 2.0, exact=True) == pytest.approx(
        8 * 0.95 / 3, rel=1e-9)
    assert inv.pendulum_energy_residual(o0, o1, 2.0) > inv.PENDULUM_TOLERANCE


@given(st.floats(-math.pi, math.pi), st.floats(-8, 8), st.floats(-2, 2))
@settings(max_examples=200, deadline=None)
def test_pendulum_identity_holds_on_unclipped_steps(theta, omega, u):
    th1, w1 = pend_step(theta, omega, u, max_speed=1e9)
    if abs(w1) > 8:
        return
    o0, o1 = pend_obs(theta, omega), pend_obs(th1, w1)
    assert inv.pendulum_energy_residual(o0, o1, u, exact=True) < 1e-9
    assert inv.pendulum_energy_residual(o0, o1, u) <= inv.pendulum_energy_bound() + 1e-9


def rollout_residuals(policy, episodes=6, seed=0):
    """(residual, exact residual, |free speed| − 8) for every step of real Pendulum-v1 episodes.

    A step is clipped when the last column is > 0 (the env clips omega' at ±8).
    """
    env = gym.make("Pendulum-v1")
    check, exact = inv.pendulum_energy().bind(env), inv.pendulum_energy(exact=True).bind(env)
    rng = np.random.default_rng(seed)
    rows = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        for _ in range(200):
            u = policy(obs, rng)
            theta, omega = env.unwrapped.state
            w_free = omega + (15.0 * math.sin(theta) + 3.0 * u) * DT
            action = np.array([u], np.float32)
            next_obs, *_ = env.step(action)
            t = {"obs": obs, "next_obs": next_obs, "action": action}
            rows.append((check(t), exact(t), abs(w_free) - 8.0))
            obs = next_obs
    return np.array(rows)


@pytest.mark.parametrize("policy", [
    lambda o, rng: float(rng.uniform(-2, 2)),
    lambda o, rng: 2.0 if o[2] >= 0 else -2.0,  # pumps energy in: reaches the speed clip
])
def test_pendulum_energy_on_real_env(policy):
    rows = rollout_residuals(policy)
    res, exact, over = rows[:, 0], rows[:, 1], rows[:, 2]
    clipped = over > 0
    assert res[~clipped].max() < inv.pendulum_energy_bound()   # the 0.584 J claim
    assert exact[~clipped].max() < 1e-4                        # float32 round-off only
    assert not (res > inv.PENDULUM_TOLERANCE)[~clipped].any()  # violations only on clip steps
    # exact mode misses I * 8 * (|free speed| - 8) J on a clip step: beyond round-off, always
    assert (exact[over > 1e-3] > 1e-4).all()


def test_spinning_policy_reaches_clip():
    rows = rollout_residuals(lambda o, rng: 2.0 if o[2] >= 0 else -2.0, episodes=2)
    clipped = rows[:, 2] > 0
    violated = rows[:, 0] > inv.PENDULUM_TOLERANCE
    assert clipped.sum() > 20
    assert violated.sum() > clipped.sum() / 2  # most of its clip steps are true violations


def test_pendulum_energy_reads_env_parameters():
    env = gym.make("Pendulum-v1", g=9.81)
    check = inv.pendulum_energy(exact=True).bind(env)
    wrong_g = inv.pendulum_energy(exact=True).bind(gym.make("Pendulum-v1"))
    obs, _ = env.reset(seed=3)
    action = np.array([5.0], np.float32)  # the env clips it to max_torque = 2; so must the check
    next_obs, *_ = env.step(action)
    t = {"obs": obs, "next_obs": next_obs, "action": action}
    assert check(t) < 1e-4
    assert wrong_g(t) > 1e-3


def test_pendulum_energy_not_applicable_elsewhere():
    with pytest.raises(NotApplicableError, match="Pendulum"):
        inv.pendulum_energy().bind(gym.make("CartPole-v1"))


def test_factories_defaults_and_names():
    assert (inv.finite().name, inv.finite().mode, inv.finite().tolerance) == ("finite", "hard", 0)
    assert inv.pendulum_energy().tolerance == inv.PENDULUM_TOLERANCE
    assert inv.pendulum_energy().mode == "soft"
    assert inv.action_bounds(tolerance=0.1, mode="soft", name="a2").name == "a2"
    with pytest.raises(ConfigurationError, match="tolerance"):
        inv.finite(tolerance=-1.0)
    with pytest.raises(ConfigurationError, match="mode"):
        inv.obs_bounds(mode="medium")  # type: ignore[arg-type]
