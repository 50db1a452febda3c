"""BatchedInvariantWrapper: one vectorised pass for all sub-envs, agreeing with per-env checks."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from faulty_envs import PendulumFaults

from physlink_gym import InvariantWrapper, audit, invariants, valid_mask
from physlink_gym.data import record_trajectories
from physlink_gym.errors import ConfigurationError
from physlink_gym.invariants import Invariant, batch_invariant
from physlink_gym.vec import BatchedInvariantWrapper

N = 4


def _speed(batch):
    return np.abs(np.asarray(batch["next_obs"], np.float64)[:, 2])


def _invariants():
    return [invariants.finite(), invariants.obs_bounds(),
            invariants.action_bounds(mode="soft", tolerance=0.5), invariants.pendulum_energy(),
            batch_invariant("speed", _speed, tolerance=7.0, mode="soft")]


def _make(i, wrap):
    def make():
        env = PendulumFaults(gym.make("Pendulum-v1", max_episode_steps=120), seed=i)
        return InvariantWrapper(env, _invariants()) if wrap else env
    return make


def _run(venv, steps=300, seed=0):
    rng = np.random.default_rng(seed)
    venv.reset(seed=seed)
    out = []
    for _ in range(steps):
        actions = rng.uniform(-3, 3, size=(N, 1)).astype(np.float32)
        _, reward, _, _, info = venv.step(actions)
        out.append((reward.copy(), valid_mask(info, num_envs=N, missing=True),
                    info.get("_physlink", np.zeros(N, bool)).copy()))
    return out


@pytest.mark.parametrize("mode", [gym.vector.AutoresetMode.NEXT_STEP,
                                  gym.vector.AutoresetMode.SAME_STEP])
def test_batched_agrees_with_per_env_wrappers(mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_env = gym.vector.SyncVectorEnv([_make(i, True) for i in range(N)],
                                           autoreset_mode=mode)
        batched = BatchedInvariantWrapper(
            gym.vector.SyncVectorEnv([_make(i, False) for i in range(N)], autoreset_mode=mode),
            _invariants())
        a, b = _run(per_env), _run(batched)
    checked = 0
    for (reward_a, valid_a, _), (reward_b, valid_b, rows) in zip(a, b, strict=True):
        np.testing.assert_allclose(reward_b, reward_a, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(valid_b[rows], valid_a[rows])
        checked += rows.sum()
    reports = [per_env.envs[i].compliance_report() for i in range(N)]
    for i in range(N):
        mine, theirs = batched.compliance_report(env_index=i), reports[i]
        assert (mine.steps, mine.invalid_steps, mine.episodes) == (
            theirs.steps, theirs.invalid_steps, theirs.episodes)
        np.testing.assert_allclose(mine.episode_costs, theirs.episode_costs, rtol=1e-6)
        for name in theirs.statuses:
            assert mine[name].violations == theirs[name].violations, (i, name)
            assert mine[name].checked == theirs[name].checked, (i, name)
            assert mine[name].histogram == theirs[name].histogram, (i, name)
            assert sorted(w[1:3] for w in mine[name].worst) == sorted(
                w[1:3] for w in theirs[name].worst)
    merged = batched.compliance_report()
    assert merged.steps == checked == sum(r.steps for r in reports)
    assert merged["finite"].violations > 0 and merged.env_count == N
    if mode == gym.vector.AutoresetMode.NEXT_STEP:
        assert checked < N * 300  # the reset steps hold no transition


def test_record_fields_and_masks():
    venv = BatchedInvariantWrapper(gym.make_vec("Pendulum-v1", num_envs=3), _invariants())
    venv.reset(seed=0)
    _, reward, _, _, info = venv.step(np.full((3, 1), 2.9, np.float32))
    record = info["physlink"]
    assert set(record) == {"valid", "cost", "residuals", "violated", "errors", "raw_reward"}
    np.testing.assert_allclose(record["residuals"]["action_bounds"], 0.9, rtol=1e-6)
    np.testing.assert_allclose(info["cost"], 0.4, rtol=1e-5)  # 0.9 − tolerance 0.5
    np.testing.assert_allclose(reward, record["raw_reward"] - 0.4, rtol=1e-5)
    assert info["_physlink"].all()


def test_a_check_without_batch_is_not_applicable_with_the_reason():
    plain = Invariant("plain", fn=lambda t: 0.0)
    with pytest.warns(UserWarning, match="no vectorised check"):
        venv = BatchedInvariantWrapper(gym.make_vec("Pendulum-v1", num_envs=2),
                                       [invariants.finite(), plain])
    assert "InvariantWrapper" in venv.not_applicable["plain"]
    venv.reset(seed=0)
    venv.step(venv.action_space.sample())
    assert venv.compliance_report().statuses == {"finite": "PASS", "plain": "NOT_APPLICABLE"}


def test_batch_invariant_runs_online_offline_and_batched_alike():
    inv = batch_invariant("speed", _speed, tolerance=1.0, mode="hard")
    env = InvariantWrapper(gym.make("Pendulum-v1"), [inv])
    data = record_trajectories(env, n_steps=200, seed=0)
    audited, report = audit(data, [inv])
    np.testing.assert_array_equal(audited.valid, data.valid)
    assert report["speed"].violations == env.compliance_report()["speed"].violations > 0


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ConfigurationError, match="VectorEnv"):
        BatchedInvariantWrapper(gym.make("Pendulum-v1"), [invariants.finite()])
    with pytest.raises(ConfigurationError, match="unique"):
        BatchedInvariantWrapper(gym.make_vec("Pendulum-v1", num_envs=2),
                                [invariants.finite(), invariants.finite()])
    with pytest.raises(ConfigurationError, match="soft_weight"):
        BatchedInvariantWrapper(gym.make_vec("Pendulum-v1", num_envs=2), [], soft_weight=-1)
    venv = BatchedInvariantWrapper(gym.make_vec("Pendulum-v1", num_envs=2), [])
    with pytest.raises(gym.error.ResetNeeded):
        venv.step(venv.action_space.sample())
