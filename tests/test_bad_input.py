"""Bad input (issue 3 §6): each ends as a counted violation/error or a clear PhysLinkError."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

from physlink_gym import invariants as inv
from physlink_gym.errors import PhysLinkError
from physlink_gym.invariants import Invariant, NotApplicableError
from physlink_gym.wrappers import (
    InvariantError,
    InvariantWarning,
    InvariantWrapper,
    StepAPIError,
)


class ScriptedEnv(gym.Env):
    """Returns scripted (obs, reward) pairs: step k gives ``script[k]``."""

    def __init__(self, script):
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.script, self.k = script, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.k = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        obs, reward = self.script[self.k]
        self.k += 1
        return np.asarray(obs, np.float32), reward, False, False, {}


DEFAULT = [inv.finite(), inv.obs_bounds(), inv.action_bounds()]


def run(script, actions, invariants=DEFAULT, **kw):
    env = InvariantWrapper(ScriptedEnv(script), invariants, **kw)
    env.reset(seed=0)
    infos = [env.step(a)[4]["physlink"] for a in actions]
    return env, infos


ZERO = np.zeros(2, np.float32)


def test_nan_and_inf_in_obs_are_violations():
    env, infos = run([([np.nan, 0.0], 0.0), ([np.inf, -np.inf], 0.0), ([0.0, 0.0], 0.0)],
                     [ZERO] * 3)
    assert [i["residuals"]["finite"] for i in infos] == [1.0, 2.0, 0.0]
    assert [i["valid"] for i in infos] == [False, False, True]
    assert np.isnan(infos[0]["residuals"]["obs_bounds"])
    assert infos[1]["residuals"]["obs_bounds"] == np.inf
    rep = env.compliance_report()
    assert rep["finite"].violations == 2 and rep["finite"].nonfinite == 0
    assert rep["obs_bounds"].nonfinite == 2 and rep["obs_bounds"].max_residual == np.inf


def test_nan_and_inf_reward_are_violations():
    _, infos = run([([0.0, 0.0], float("nan")), ([0.0, 0.0], float("inf"))], [ZERO] * 2)
    assert [(i["residuals"]["finite"], i["valid"]) for i in infos] == [(1.0, False),
                                                                       (1.0, False)]


def test_nan_and_inf_action_are_violations():
    _, infos = run([([0.0, 0.0], 0.0)] * 2,
                   [np.array([np.nan, 0.0], np.float32), np.array([np.inf, 0.0], np.float32)])
    assert [i["residuals"]["finite"] for i in infos] == [1.0, 1.0]
    assert np.isnan(infos[0]["residuals"]["action_bounds"])
    assert infos[1]["residuals"]["action_bounds"] == np.inf
    assert not any(i["valid"] for i in infos)


def test_wrong_action_shape_is_a_violation():
    # Pendulum silently accepts a (2,) action (it takes action[0]); the check does not.
    env = InvariantWrapper(gym.make("Pendulum-v1"), [inv.action_bounds()])
    env.reset(seed=0)
    info = env.step(np.zeros(2, np.float32))[4]["physlink"]
    assert info["residuals"]["action_bounds"] == np.inf and not info["valid"]


@pytest.mark.parametrize("garbage", [None, "0.1", 1 + 2j, -0.5, True, np.array(["a"]),
                                     object()])
def test_garbage_residual_is_an_error(garbage):
    bad = Invariant("bad", fn=lambda t: garbage, tolerance=1.0)
    with pytest.warns(InvariantWarning, match="'bad' failed"):
        env, infos = run([([0.0, 0.0], 0.0)] * 3, [ZERO] * 3, [inv.finite(), bad])
    assert all(np.isnan(i["residuals"]["bad"]) for i in infos)
    assert [i["errors"] for i in infos] == [1, 1, 1]
    assert all(i["valid"] and not i["violated"]["bad"] for i in infos)  # errors do not flag
    rep = env.compliance_report()["bad"]
    assert (rep.status, rep.errors, rep.checked) == ("ERROR", 3, 0)


def test_array_residual_reduces_by_max_abs():
    arr = Invariant("arr", fn=lambda t: np.array([0.1, -3.0]), tolerance=1.0)
    _, infos = run([([0.0, 0.0], 0.0)], [ZERO], [arr])
    assert infos[0]["residuals"]["arr"] == 3.0 and not infos[0]["valid"]


def test_raising_invariant_record_disable_raise():
    calls = []

    def boom(t):
        calls.append(t["step"])
        raise ZeroDivisionError("division by zero")

    inv_boom = Invariant("boom", fn=boom, tolerance=1.0)
    with pytest.warns(InvariantWarning):
        env, infos = run([([0.0, 0.0], 0.0)] * 3, [ZERO] * 3, [inv_boom], on_error="record")
    assert calls == [0, 1, 2] and env.compliance_report()["boom"].errors == 3
    assert "ZeroDivisionError" in env.compliance_report().summary()
    calls.clear()
    with pytest.warns(InvariantWarning):
        env, infos = run([([0.0, 0.0], 0.0)] * 3, [ZERO] * 3, [inv_boom], on_error="disable")
    assert calls == [0] and [i["errors"] for i in infos] == [1, 0, 0]
    assert np.isnan(infos[2]["residuals"]["boom"])
    assert env.compliance_report()["boom"].disabled
    with pytest.raises(InvariantError, match="ZeroDivisionError") as err:
        run([([0.0, 0.0], 0.0)], [ZERO], [inv_boom], on_error="raise")
    assert isinstance(err.value.__cause__, ZeroDivisionError)


def test_failing_hook_is_an_error_and_skips_the_check():
    class BadHook:
        def before_step(self, env, action):
            raise RuntimeError("hook broke")

        def __call__(self, t):
            return 0.0

    with pytest.warns(InvariantWarning, match="hook broke"):
        env, infos = run([([0.0, 0.0], 0.0)] * 2, [ZERO] * 2,
                         [Invariant("hooked", binder=lambda e: BadHook())])
    assert [i["errors"] for i in infos] == [1, 1]
    assert all(np.isnan(i["residuals"]["hooked"]) for i in infos)
    assert env.compliance_report()["hooked"].errors == 2


def test_mujoco_invariant_on_cartpole_is_not_applicable():
    def needs_mujoco(env):
        if not hasattr(env.unwrapped, "model"):
            raise NotApplicableError(got=f"{type(env.unwrapped).__name__} without MuJoCo data",
                                     expected="a MuJoCo env", fix="drop this invariant")
        return lambda t: 0.0

    mj = Invariant("mj_only", binder=needs_mujoco, requires=("mujoco",))
    with pytest.warns(InvariantWarning, match="'mj_only' is NOT_APPLICABLE to CartPoleEnv"):
        env = InvariantWrapper(gym.make("CartPole-v1"), [inv.finite(), mj])
    env.reset(seed=0)
    info = env.step(1)[4]["physlink"]
    assert "mj_only" not in info["residuals"] and info["valid"]
    line = env.compliance_report().summary().splitlines()[1]
    assert line.startswith("mj_only (hard): NOT_APPLICABLE (Got: CartPoleEnv without MuJoCo data.")


class SixTupleEnv(ScriptedEnv):
    def step(self, action):
        return np.zeros(2, np.float32), 0.0, 0.5, False, False, {}


def test_safety_gymnasium_six_tuple_step_is_a_clear_error():
    env = InvariantWrapper(SixTupleEnv([]), [inv.finite()])
    env.reset(seed=0)
    with pytest.raises(StepAPIError, match="returning 6 values") as err:
        env.step(ZERO)
    assert isinstance(err.value, PhysLinkError) and "SafetyGymnasium2Gymnasium" in str(err.value)


def test_safety_gymnasium_env_is_refused_at_construction():
    cls = type("Builder", (SixTupleEnv,), {"__module__": "safety_gymnasium.builder"})
    with pytest.raises(StepAPIError, match="5-tuple"):
        InvariantWrapper(cls([]), [inv.finite()])


def test_nothing_passes_silently_in_a_long_random_run():
    # Random garbage everywhere: every non-finite value must surface as a violation.
    rng = np.random.default_rng(0)
    values = [np.nan, np.inf, -np.inf, 0.0, 1.0, 50.0]
    script = [(rng.choice(values, 2), float(rng.choice(values))) for _ in range(200)]
    actions = [rng.choice(values, 2).astype(np.float32) for _ in range(200)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no invariant errors: all are violations
        _, infos = run(script, actions)
    for (obs, reward), action, info in zip(script, actions, infos, strict=True):
        n_bad = int(np.sum(~np.isfinite(obs)) + (not np.isfinite(reward))
                    + np.sum(~np.isfinite(action)))
        assert info["residuals"]["finite"] == n_bad
        assert info["valid"] == (n_bad == 0 and np.all(np.abs(obs) <= 10)
                                 and np.all(np.abs(action) <= 1))
