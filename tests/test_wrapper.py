"""InvariantWrapper: the info schema, penalty, hard-violation options, episodes, pickling."""

from __future__ import annotations

import copy
import math
import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest

from physlink_gym import invariants as inv
from physlink_gym.errors import ConfigurationError
from physlink_gym.invariants import Invariant, register_invariant
from physlink_gym.wrappers import (
    InvariantViolationError,
    InvariantWarning,
    InvariantWrapper,
    ResetNeededError,
    valid_mask,
)

RECORD_TYPES = {"valid": bool, "cost": float, "residuals": dict, "violated": dict, "errors": int,
                "raw_reward": float}


class CounterEnv(gym.Env):
    """obs = [k, k] after k steps (k = 0 at reset); reward 1; terminates after ``length`` steps.

    With ``alias=True`` it returns the same array object every step, mutated in place.
    """

    def __init__(self, length: int = 5, alias: bool = False) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.length, self.alias, self.k = length, alias, 0
        self.buf = np.zeros(2)

    def _obs(self):
        self.buf[:] = self.k
        return self.buf if self.alias else self.buf.copy()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.k = 0
        return self._obs(), {}

    def step(self, action):
        self.k += 1
        return self._obs(), 1.0, self.k >= self.length, False, {}


def k_residual(scale: float = 1.0):
    """Residual = scale · k (the step count after the step)."""
    return lambda t: scale * float(t["next_obs"][0])


def wrap(invariants, length=5, **kw):
    env = InvariantWrapper(CounterEnv(length), invariants, **kw)
    env.reset(seed=0)
    return env


# ------------------------------------------------------------------ schema
def test_record_schema_is_identical_on_every_step():
    env = InvariantWrapper(gym.make("Pendulum-v1", max_episode_steps=30), [
        inv.finite(), inv.pendulum_energy(mode="hard", tolerance=0.05),
        Invariant("soft_speed", fn=lambda t: abs(float(t["next_obs"][2])), tolerance=1.0,
                  mode="soft")])
    env.reset(seed=1)
    names = ["finite", "pendulum_energy", "soft_speed"]
    seen_violation = seen_valid = False
    for _ in range(30):
        *_, info = env.step(np.array([2.0], np.float32))
        rec = info["physlink"]
        assert list(rec) == list(RECORD_TYPES)
        assert all(type(rec[k]) is t for k, t in RECORD_TYPES.items())
        assert list(rec["residuals"]) == names and list(rec["violated"]) == names
        assert all(type(v) is float for v in rec["residuals"].values())
        assert all(type(v) is bool for v in rec["violated"].values())
        assert info["cost"] == rec["cost"]
        seen_violation |= any(rec["violated"].values())
        seen_valid |= rec["valid"]
    assert seen_violation and seen_valid
    assert "physlink_episode" in info and "episode" not in info


def test_transition_fields_dt_env_cache_and_step():
    seen = []

    def probe(t):
        t["cache"]["x"] = t["cache"].get("x", 0) + 1
        seen.append((t["dt"], t["env"], t["step"], t["terminated"], t["truncated"],
                     dict(t["cache"])))
        return 0.0

    def reader(t):
        return float(t["cache"]["x"])  # shares the scratch value computed by probe this step

    env = InvariantWrapper(gym.make("Pendulum-v1"), [Invariant("probe", fn=probe),
                                                     Invariant("reader", fn=reader)])
    env.reset(seed=0)
    for _ in range(3):
        *_, info = env.step(np.zeros(1, np.float32))
        assert info["physlink"]["residuals"]["reader"] == 1.0  # the cache was emptied
    assert [s[0] for s in seen] == [0.05] * 3
    assert all(s[1] is env.unwrapped for s in seen)
    assert [s[2] for s in seen] == [0, 1, 2]
    custom = wrap([Invariant("dt", fn=lambda t: 0.0 if math.isnan(t["dt"]) else 1.0)])
    assert custom.step(np.zeros(1))[4]["physlink"]["residuals"]["dt"] == 0.0  # NaN: no env.dt


# ------------------------------------------------------------------ penalty and cost
def test_soft_penalty_formula():
    # residuals at step k: a = k, b = 2k; tolerances 1.5 and 3.0; hard h = 10k never counts.
    env = wrap([Invariant("a", fn=k_residual(), tolerance=1.5, mode="soft"),
                Invariant("b", fn=k_residual(2.0), tolerance=3.0, mode="soft"),
                Invariant("h", fn=k_residual(10.0), tolerance=100.0, mode="hard")],
               soft_weight=0.5)
    expected_costs = [0.0, 0.5 + 1.0, 1.5 + 3.0, 2.5 + 5.0]  # k = 1..4
    for cost in expected_costs:
        _, reward, _, _, info = env.step(np.zeros(1))
        assert info["cost"] == pytest.approx(cost)
        assert reward == pytest.approx(1.0 - 0.5 * cost)
        assert info["physlink"]["raw_reward"] == 1.0
        assert info["physlink"]["valid"]


def test_env_cost_is_added_to_info_cost():
    class CostEnv(CounterEnv):
        def step(self, action):
            obs, reward, te, tr, _ = super().step(action)
            return obs, reward, te, tr, {"cost": 2.0}

    env = InvariantWrapper(CostEnv(), [Invariant("a", fn=k_residual(), tolerance=0.5,
                                                 mode="soft")])
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(1))
    assert info["cost"] == 2.5 and info["physlink"]["cost"] == 0.5 and reward == 0.5


def test_reward_untouched_without_soft_invariants():
    env = wrap([Invariant("h", fn=k_residual(), tolerance=0.5, mode="hard")])
    _, reward, _, _, info = env.step(np.zeros(1))
    assert reward == 1.0 and info["cost"] == 0.0 and not info["physlink"]["valid"]


def test_nonfinite_soft_residual_flags_without_cost():
    env = wrap([Invariant("s", fn=lambda t: float("nan"), tolerance=1.0, mode="soft")])
    _, reward, _, _, info = env.step(np.zeros(1))
    assert info["physlink"]["valid"] is False and info["cost"] == 0.0 and reward == 1.0
    assert info["physlink"]["violated"] == {"s": True}


# ------------------------------------------------------------------ hard options
@pytest.mark.parametrize(("on_hard", "terminated", "truncated"), [
    ("flag", False, False), ("truncate", False, True), ("terminate", True, False)])
def test_on_hard_options(on_hard, terminated, truncated):
    env = wrap([Invariant("h", fn=k_residual(), tolerance=1.5)], length=10, on_hard=on_hard)
    _, _, te, tr, info = env.step(np.zeros(1))  # k = 1: fine
    assert (te, tr, info["physlink"]["valid"]) == (False, False, True)
    _, _, te, tr, info = env.step(np.zeros(1))  # k = 2 > 1.5: violation
    assert (te, tr, info["physlink"]["valid"]) == (terminated, truncated, False)
    assert ("physlink_episode" in info) == (terminated or truncated)


def test_on_hard_raise_names_the_invariant():
    env = wrap([Invariant("h", fn=k_residual(), tolerance=1.5)], on_hard="raise")
    env.step(np.zeros(1))
    with pytest.raises(InvariantViolationError, match=r"h residual=2\.0 > tolerance=1\.5"):
        env.step(np.zeros(1))


# ------------------------------------------------------------------ episodes
class Hooked:
    """A bound check that records its hook calls."""

    def __init__(self):
        self.calls = []

    def on_reset(self, env, obs):
        self.calls.append(("reset", float(obs[0])))

    def before_step(self, env, action):
        self.calls.append(("before", env.k))  # env is the unwrapped env, before its step

    def __call__(self, t):
        self.calls.append(("check", t["step"]))
        return 0.0


def test_hooks_are_called_in_order():
    check = Hooked()
    env = InvariantWrapper(CounterEnv(2), [Invariant("hooked", binder=lambda e: check)])
    env.reset(seed=0)
    env.step(np.zeros(1))
    env.step(np.zeros(1))
    env.reset()
    assert check.calls == [("reset", 0.0), ("before", 0), ("check", 0), ("before", 1),
                           ("check", 1), ("reset", 0.0)]


def test_episode_summary_and_reset_rebaselines():
    env = wrap([Invariant("a", fn=k_residual(), tolerance=2.5, mode="soft")], length=4)
    infos = [env.step(np.zeros(1))[4] for _ in range(4)]
    assert [i["physlink"]["violated"]["a"] for i in infos] == [False, False, True, True]
    summary = infos[-1]["physlink_episode"]
    assert summary == {"length": 4, "cost": pytest.approx(0.5 + 1.5), "invalid_steps": 0,
                       "errors": 0, "violations": {"a": 2}}
    env.reset()
    info = env.step(np.zeros(1))[4]
    assert info["physlink"]["residuals"]["a"] == 1.0
    report = env.compliance_report()
    assert (report.episodes, report.steps, report.episode_costs) == (1, 5, [pytest.approx(2.0)])
    assert [v["episode"] for v in report.violations()] == [0, 0]
    assert report["a"].episode_costs == [pytest.approx(2.0)]


def test_step_after_episode_end_without_reset():
    env = wrap([Invariant("a", fn=k_residual(), tolerance=0.5)], length=2)
    env.step(np.zeros(1))
    assert env.step(np.zeros(1))[2]  # terminated
    with pytest.warns(InvariantWarning, match="without reset"):
        info = env.step(np.zeros(1))[4]
    assert info["physlink"]["residuals"]["a"] == 3.0  # checked against the last observation
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        env.step(np.zeros(1))  # CounterEnv keeps terminating: each step is a new episode
    assert {v["episode"] for v in env.compliance_report().violations()} == {0, 1, 2}


def test_step_before_reset_raises():
    env = InvariantWrapper(CounterEnv(), [inv.finite()])
    with pytest.raises(ResetNeededError, match="reset"):
        env.step(np.zeros(1))


def test_previous_observation_is_copied():
    env = InvariantWrapper(CounterEnv(alias=True),
                           [Invariant("d", fn=lambda t: float(t["next_obs"][0] - t["obs"][0]),
                                      tolerance=2.0)])
    env.reset(seed=0)
    infos = [env.step(np.zeros(1))[4] for _ in range(3)]
    assert [i["physlink"]["residuals"]["d"] for i in infos] == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------ configuration
def test_constructor_validation():
    for kw, word in [({"on_hard": "explode"}, "on_hard"), ({"on_error": "ignore"}, "on_error"),
                     ({"soft_weight": -1.0}, "soft_weight"), ({"soft_weight": math.inf}, "soft"),
                     ({"soft_weight": True}, "soft_weight"), ({"info_key": ""}, "info_key")]:
        with pytest.raises(ConfigurationError, match=word):
            InvariantWrapper(CounterEnv(), [], **kw)
    with pytest.raises(ConfigurationError, match="list"):
        InvariantWrapper(CounterEnv(), inv.finite())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unique"):
        InvariantWrapper(CounterEnv(), [inv.finite(), inv.finite()])


def test_register_invariant_and_custom_info_key():
    env = InvariantWrapper(CounterEnv(), [inv.finite()], info_key="phys")
    register_invariant(env, "k", k_residual(), tolerance=1.5, mode="soft")
    with pytest.raises(ConfigurationError, match="unique"):
        register_invariant(env, "k", k_residual(), tolerance=1.0)
    env.reset(seed=0)
    env.step(np.zeros(1))
    info = env.step(np.zeros(1))[4]
    assert "physlink" not in info
    assert info["phys"]["residuals"] == {"finite": 0.0, "k": 2.0}
    assert info["cost"] == 0.5
    assert valid_mask(info, info_key="phys").tolist() == [True]


def test_not_applicable_is_reported_at_construction():
    with pytest.warns(InvariantWarning, match="'action_bounds' is NOT_APPLICABLE"):
        env = InvariantWrapper(gym.make("CartPole-v1"), [inv.finite(), inv.action_bounds()])
    assert "Box" in env.not_applicable["action_bounds"]
    env.reset(seed=0)
    info = env.step(0)[4]
    assert list(info["physlink"]["residuals"]) == ["finite"]
    assert env.compliance_report()["action_bounds"].status == "NOT_APPLICABLE"


# ------------------------------------------------------------------ pickling
def test_pickle_keeps_state_and_lambdas():
    env = InvariantWrapper(gym.make("Pendulum-v1"), [
        inv.finite(), Invariant("lam", fn=lambda t: abs(float(t["next_obs"][2])),
                                tolerance=0.5, mode="soft")])
    env.reset(seed=0)
    for _ in range(20):
        env.step(np.array([2.0], np.float32))
    before = env.compliance_report()
    for clone in (pickle.loads(pickle.dumps(env)), copy.deepcopy(env)):
        assert clone.compliance_report() == before
        info = clone.step(np.array([2.0], np.float32))[4]
        assert list(info["physlink"]["residuals"]) == ["finite", "lam"]
        assert clone.compliance_report().steps == 21
    assert env.compliance_report().steps == 20  # the original is untouched


def test_hard_cost_adds_an_indicator_cost_without_touching_the_reward() -> None:
    import gymnasium as gym

    from physlink_gym import Invariant, InvariantWrapper

    def build(hard_cost: float) -> InvariantWrapper:
        flag = Invariant("flag", lambda t: float(t["step"] % 2), tolerance=0.5)  # odd steps
        soft = Invariant("soft", lambda t: 0.25, tolerance=0.0, mode="soft")
        return InvariantWrapper(gym.make("Pendulum-v1"), [flag, soft], hard_cost=hard_cost)

    plain, costly = build(0.0), build(2.0)
    for env in (plain, costly):
        env.reset(seed=0)
    action = np.array([0.5], np.float32)
    for step in range(4):
        _, r0, *_, i0 = plain.step(action)
        _, r1, *_, i1 = costly.step(action)
        assert r0 == r1  # the reward never sees hard_cost
        flagged = step % 2 == 1
        assert i0["physlink"]["valid"] is not flagged
        assert i1["cost"] == pytest.approx(0.25 + (2.0 if flagged else 0.0))
        assert i0["cost"] == pytest.approx(0.25)
    with pytest.raises(ConfigurationError, match="hard_cost"):
        InvariantWrapper(gym.make("Pendulum-v1"), [], hard_cost=-1.0)
