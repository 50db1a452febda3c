"""Offline audit: the same invariants over collected trajectories, in agreement with online."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from faulty_envs import PendulumFaults

from physlink_gym import ActionSpace, InvariantWrapper, ObservationSpace, audit, invariants
from physlink_gym.data import Trajectories, record_trajectories
from physlink_gym.errors import ConfigurationError, ValidationError
from physlink_gym.invariants import Invariant
from physlink_gym.invariants.core import NotApplicableError


def _pendulum_invariants():
    def big_torque(t):  # a user callable, looped offline (no batch)
        return abs(float(np.asarray(t["action"]).reshape(-1)[0]))

    return [
        invariants.finite(),
        invariants.obs_bounds(),
        invariants.action_bounds(mode="soft", tolerance=0.1),
        invariants.pendulum_energy(),
        Invariant("big_torque", fn=big_torque, tolerance=2.5, mode="soft"),
        invariants.energy_balance(lambda o: float(o[2]) ** 2, lambda t: 0.0, tolerance=20.0),
    ]


class WideActions:
    """Random actions up to ±3 (the env clips at ±2): action_bounds has something to see."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs):
        return self.rng.uniform(-3.0, 3.0, size=1).astype(np.float32)


def _online(n_steps: int = 1200, seed: int = 0):
    env = InvariantWrapper(PendulumFaults(gym.make("Pendulum-v1", max_episode_steps=150), seed),
                           _pendulum_invariants())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = record_trajectories(env, WideActions(seed), n_steps=n_steps, seed=seed)
    return env, data


def test_offline_agrees_with_online_on_every_transition():
    env, online = _online()
    raw = Trajectories(**{**online.as_dict(), "valid": np.ones(len(online), bool)},
                       extras={}, meta=online.meta)
    audited, report = audit(raw, _pendulum_invariants(), env=gym.make("Pendulum-v1"))
    online_report = env.compliance_report()
    assert (~online.valid).sum() > 20, "the faults must be visible"
    np.testing.assert_array_equal(audited.valid, online.valid)
    np.testing.assert_allclose(audited.extras["audit_cost"], online.extras["cost"], rtol=1e-5,
                               atol=1e-5)
    assert report.steps == online_report.steps
    assert report.invalid_steps == online_report.invalid_steps
    for name in online_report.statuses:
        off, on = report[name], online_report[name]
        assert (off.checked, off.violations, off.nonfinite) == (on.checked, on.violations,
                                                                 on.nonfinite), name
        assert off.max_residual == pytest.approx(on.max_residual, rel=1e-6), name
        # the kept violations name the same episode and step
        assert sorted((w[1], w[2]) for w in off.worst) == sorted((w[1], w[2]) for w in on.worst)
        assert off.histogram == on.histogram, name
    np.testing.assert_allclose(report.episode_costs, online_report.episode_costs, rtol=1e-5,
                               atol=1e-4)


def test_audit_keeps_raw_reward_and_records_soft_residuals_and_penalised_reward():
    _, online = _online(400, seed=1)
    audited, _ = audit(online, _pendulum_invariants(), env=gym.make("Pendulum-v1"),
                       soft_weight=2.0)
    np.testing.assert_array_equal(audited.reward, online.reward)
    cost = audited.extras["audit_cost"]
    np.testing.assert_allclose(audited.extras["audit_penalised_reward"],
                               online.reward - 2.0 * cost, rtol=1e-6)
    residual = audited.extras["audit_residual.big_torque"]
    expected = np.abs(online.action[:, 0]) * ~online.is_first
    np.testing.assert_allclose(residual, expected, rtol=1e-6)
    assert "audit_residual.finite" not in audited.extras  # hard: it flags, it costs nothing
    assert cost[online.is_first].max() == 0.0


def test_vectorised_checks_match_the_same_checks_transition_by_transition():
    _, data = _online(900, seed=2)
    env = gym.make("Pendulum-v1")
    looped = []
    for inv in _pendulum_invariants()[:4]:
        def binder(e, inv=inv):
            check = inv.bind(e)
            hooks = {k: getattr(check, k) for k in ("on_reset",) if hasattr(check, k)}
            return type("NoBatch", (), {"__call__": lambda self, t: check(t), **{
                k: staticmethod(v) for k, v in hooks.items()}})()
        looped.append(Invariant(inv.name, binder=binder, tolerance=inv.tolerance, mode=inv.mode))
    fast, fast_report = audit(data, _pendulum_invariants()[:4], env=env)
    slow, slow_report = audit(data, looped, env=env)
    np.testing.assert_array_equal(fast.valid, slow.valid)
    for name in fast_report.statuses:
        assert fast_report[name].violations == slow_report[name].violations
        assert fast_report[name].max_residual == pytest.approx(slow_report[name].max_residual)


def test_audit_keeps_earlier_flags_and_is_idempotent():
    _, data = _online(600, seed=3)
    data.valid[5] = False  # flagged before the audit (e.g. online)
    once, report1 = audit(data, ["finite", "obs_bounds"], env=gym.make("Pendulum-v1"))
    twice, report2 = audit(once, ["finite", "obs_bounds"], env=gym.make("Pendulum-v1"))
    assert not once.valid[5]
    np.testing.assert_array_equal(once.valid, twice.valid)
    assert report1.to_dict() == report2.to_dict()
    assert once.meta["audit"]["invariants"][0]["name"] == "finite"


def test_audit_without_env_from_a_list_and_project_spaces():
    steps = []
    for k in range(6):
        steps.append({"obs": [0.1 * k, 0.0], "action": [0.5 if k != 3 else 4.0],
                      "reward": 1.0, "terminated": k == 5, "truncated": False,
                      "next_obs": [0.1 * (k + 1), 0.0 if k != 2 else 7.0]})
    obs_space = ObservationSpace(low=(-1.0, -1.0), high=(1.0, 1.0))
    act_space = ActionSpace.continuous(1, [(-1.0, 1.0)])
    audited, report = audit(steps, ["finite", "obs_bounds", "action_bounds"],
                            observation_space=obs_space, action_space=act_space)
    assert report.statuses == {"finite": "PASS", "obs_bounds": "FAIL",
                                 "action_bounds": "FAIL"}
    # entry 3 holds next_obs of step 2 (out of range), entry 4 the action of step 3
    assert np.flatnonzero(~audited.valid).tolist() == [3, 4]
    assert report["obs_bounds"].worst[0][1:3] == [0, 2]
    assert report["obs_bounds"].max_residual == pytest.approx(6.0)


def test_space_invariants_without_a_space_are_not_applicable_with_a_fix():
    _, data = _online(50, seed=4)
    with pytest.warns(UserWarning, match="NOT_APPLICABLE"):
        _, report = audit(data, ["obs_bounds", "finite", "pendulum_energy"])
    assert report.statuses["obs_bounds"] == "NOT_APPLICABLE"
    assert "observation_space" in report["obs_bounds"].not_applicable
    assert report.statuses["pendulum_energy"] == "NOT_APPLICABLE"
    assert report.statuses["finite"] == "PASS" or report["finite"].violations > 0


def test_a_failing_user_invariant_is_an_error_not_a_crash():
    _, data = _online(120, seed=5)

    def flaky(t):
        if t["step"] == 7:
            raise RuntimeError("sensor table missing")
        return 0.0

    with pytest.warns(UserWarning, match="failed offline"):
        audited, report = audit(data, [Invariant("flaky", fn=flaky, tolerance=0.0)])
    assert report["flaky"].errors == 1
    assert report.statuses["flaky"] == "ERROR"
    assert report["flaky"].checked == report.steps - 1
    np.testing.assert_array_equal(audited.valid, data.valid)  # an ERROR does not flag


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"soft_weight": -1.0}, ConfigurationError),
    ({"soft_weight": float("nan")}, ConfigurationError),
    ({"dt": -0.1}, ConfigurationError),
    ({"observation_space": "Box(2)"}, ConfigurationError),
])
def test_bad_arguments_are_clear_errors(kwargs, error):
    _, data = _online(30, seed=6)
    with pytest.raises(error, match="Fix"):
        audit(data, ["finite"], **kwargs)


def test_bad_data_and_invariants_are_clear_errors():
    _, data = _online(30, seed=6)
    with pytest.raises(ValidationError, match="Trajectories"):
        audit({"obs": 1}, ["finite"])
    with pytest.raises(ConfigurationError, match="list of invariants"):
        audit(data, "finite")
    with pytest.raises(ConfigurationError, match="unique"):
        audit(data, ["finite", invariants.finite()])
    with pytest.raises(ConfigurationError, match="built-in"):
        audit(data, ["no_such_invariant"])


# ---------------------------------------------------------------------------------- MuJoCo
mujoco = pytest.importorskip("mujoco")


class Teleport(gym.Wrapper):
    """Moves the cart by 0.3 m after some steps: the state jumps without a velocity."""

    def __init__(self, env: gym.Env, every: int = 37) -> None:
        super().__init__(env)
        self.n = 0
        self.every = every

    def step(self, action):
        out = self.env.step(action)
        self.n += 1
        if self.n % self.every == 0:
            data = self.env.unwrapped.data
            data.qpos[0] += 0.3
            mujoco.mj_forward(self.env.unwrapped.model, data)
        return out


def _mj_invariants():
    return [invariants.kinematic_consistency(tolerance=0.05),
            invariants.joint_limits(tolerance=0.0)]


def test_state_based_mujoco_invariants_replay_offline_like_online():
    env = InvariantWrapper(Teleport(gym.make("InvertedPendulum-v5")), _mj_invariants())
    data = record_trajectories(env, n_steps=400, seed=0, sim_state=True)
    assert data.extras["qpos"].shape[1] == 2
    raw = Trajectories(**{**data.as_dict(), "valid": np.ones(len(data), bool)},
                       extras=data.extras, meta=data.meta)
    audited, report = audit(raw, _mj_invariants(), env=gym.make("InvertedPendulum-v5"))
    online = env.compliance_report()
    assert online["kinematic_consistency"].violations >= 5
    np.testing.assert_array_equal(audited.valid, data.valid)
    for name in ("kinematic_consistency", "joint_limits"):
        assert report[name].violations == online[name].violations
        assert report[name].max_residual == pytest.approx(online[name].max_residual, rel=1e-4,
                                                          abs=1e-5)


def test_mujoco_invariants_say_what_is_missing_offline():
    env = gym.make("InvertedPendulum-v5")
    data = record_trajectories(env, n_steps=20, seed=0)
    all_mj = [*_mj_invariants(), invariants.sim_health(),
              invariants.mujoco_energy()]
    with pytest.warns(UserWarning, match="NOT_APPLICABLE"):
        _, without_env = audit(data, all_mj)
    assert "pass env=" in without_env["joint_limits"].not_applicable
    with pytest.warns(UserWarning, match="NOT_APPLICABLE"):
        _, without_state = audit(data, all_mj, env=env)
    assert "sim_state=True" in without_state["kinematic_consistency"].not_applicable
    assert "online" in without_state["sim_health"].not_applicable
    assert "forces" in without_state["mujoco_energy"].not_applicable
    assert set(without_state.statuses.values()) == {"NOT_APPLICABLE"}


def test_sim_state_needs_a_mujoco_env():
    with pytest.raises(ConfigurationError, match="MuJoCo"):
        record_trajectories(gym.make("Pendulum-v1"), n_steps=3, sim_state=True)


def test_not_applicable_error_is_raised_by_binders_not_audit():
    # the binder's own error type is what audit turns into NOT_APPLICABLE
    with pytest.raises(NotApplicableError):
        invariants.joint_limits().bind(gym.make("Pendulum-v1"))


# ---------------------------------------------------------------------------------- CLI
def test_cli_audit_writes_the_audited_file_report_and_plot(tmp_path, capsys):
    from physlink_gym.cli import main
    from physlink_gym.report import ComplianceReport

    data = record_trajectories(gym.make("Pendulum-v1"), n_steps=300, seed=0)
    data.obs[100, 2] = np.nan
    data.save(tmp_path / "run.npz")
    code = main(["audit", str(tmp_path / "run.npz"), "--invariants", "finite,obs_bounds",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "1 of 300 transitions newly flagged invalid (1 invalid in all)" in printed, printed
    audited = Trajectories.load(tmp_path / "out" / "run_audited.npz")
    assert np.flatnonzero(~audited.valid).tolist() == [100]  # the transition into the NaN
    report = ComplianceReport.from_json(tmp_path / "out" / "compliance.json")
    assert report["finite"].violations == 1
    assert (tmp_path / "out" / "compliance.png").stat().st_size > 1000


@pytest.mark.parametrize(("argv", "message"), [
    (["audit", "missing.npz", "--out", "o"], "not a file"),
    (["audit", "{data}", "--invariants", "nope", "--out", "o"], "--invariants"),
    (["audit", "{data}", "--env", "NoSuchEnv-v9", "--out", "o"], "NoSuchEnv-v9"),
])
def test_cli_audit_bad_input_is_one_line(tmp_path, capsys, argv, message):
    from physlink_gym.cli import main

    data = record_trajectories(gym.make("Pendulum-v1"), n_steps=10, seed=0)
    data.save(tmp_path / "d.npz")
    paths = {"o": str(tmp_path / "o"), "{data}": str(tmp_path / "d.npz")}
    argv = [paths.get(a, a) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
