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


# -- hardening, third round: each of these ended in a raw library error before ----------------


@pytest.fixture(scope="module")
def tiny_model():
    from physlink_gym import DreamerV3

    return DreamerV3("MlpPolicy", "Pendulum-v1", preset="debug", seed=0)


def _clear(exc: BaseException) -> None:
    text = str(exc)
    assert isinstance(exc, PhysLinkError) and "Got:" in text and "Fix:" in text, text


def test_fit_and_world_model_loss_refuse_what_is_not_trajectories(tiny_model) -> None:
    for call in (lambda: tiny_model.fit("not trajectories", 1),
                 lambda: tiny_model.world_model_loss([1, 2, 3])):
        with pytest.raises(PhysLinkError, match="Trajectories") as info:
            call()
        _clear(info.value)


def test_predict_refuses_a_non_numeric_observation_and_a_wrong_episode_start(tiny_model) -> None:
    with pytest.raises(PhysLinkError, match="observation 'abc'") as info:
        tiny_model.predict("abc")
    _clear(info.value)
    obs = np.zeros(3, np.float32)
    _, state = tiny_model.predict(obs)
    with pytest.raises(PhysLinkError, match="episode_start of 3 flag") as info:
        tiny_model.predict(obs, state=state, episode_start=np.zeros(3, bool))
    _clear(info.value)


def test_wrapper_takes_an_env_id_and_refuses_what_is_not_an_env() -> None:
    env = InvariantWrapper("Pendulum-v1", [inv.finite()])
    assert type(env.unwrapped).__name__ == "PendulumEnv"
    env.reset(seed=0)
    env.step(env.action_space.sample())
    for bad in (None, 3, [1]):
        with pytest.raises(PhysLinkError, match=r"gymnasium\.Env") as info:
            InvariantWrapper(bad, [inv.finite()])  # type: ignore[arg-type]
        _clear(info.value)


def test_a_string_action_is_refused_by_name() -> None:
    env = InvariantWrapper(gym.make("Pendulum-v1"), [inv.finite(), inv.action_bounds()])
    env.reset(seed=0)
    with pytest.raises(PhysLinkError, match="action 'abc'") as info:
        env.step("abc")
    _clear(info.value)


def test_a_binder_that_reads_a_missing_attribute_is_not_applicable() -> None:
    def binder(env):
        gravity = env.unwrapped.model.opt.gravity  # a MuJoCo attribute Pendulum lacks
        return lambda t: float(np.abs(gravity).sum())

    check = Invariant("gravity", binder=binder, tolerance=1.0)
    with pytest.raises(NotApplicableError, match="lacks what its binder reads"):
        check.bind(gym.make("Pendulum-v1"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = InvariantWrapper(gym.make("Pendulum-v1"), [check])
    assert any(issubclass(w.category, InvariantWarning) for w in caught)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    assert "gravity" in env.compliance_report().summary()


def test_trajectories_refuse_meta_that_is_not_a_dict(tmp_path) -> None:
    from physlink_gym.data import Trajectories
    from physlink_gym.errors import CheckpointCorruptError

    n = 4
    arrays = {"obs": np.zeros((n, 3), np.float32), "action": np.zeros((n, 1), np.float32),
              "reward": np.zeros(n, np.float32), "is_first": np.eye(1, n, dtype=bool)[0],
              "is_terminal": np.zeros(n, bool), "is_last": np.eye(1, n, n - 1, dtype=bool)[0],
              "valid": np.ones(n, bool)}
    good = Trajectories(**arrays)
    with pytest.raises(PhysLinkError, match="meta") as info:
        Trajectories(**arrays, meta=["a", "list"])  # type: ignore[arg-type]
    _clear(info.value)
    path = good.save(tmp_path / "t.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["meta"] = np.array('["a", "list"]')
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CheckpointCorruptError, match="meta"):
        Trajectories.load(tmp_path / "bad.npz")
