"""RayVecEnv: sub-envs in Ray actors behind SB3's VecEnv API, on a local Ray."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from faulty_envs import PendulumFaults  # noqa: E402
from stable_baselines3 import SAC  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from physlink_gym import ComplianceReport, DreamerV3, InvariantWrapper, invariants  # noqa: E402
from physlink_gym.errors import ConfigurationError  # noqa: E402
from physlink_gym.vec import RayVecEnv  # noqa: E402

HALF = {"num_cpus": 0.5}  # room for the module's env and a test's own on ray.init(num_cpus=2)


def short_pendulum():
    return gym.make("Pendulum-v1", max_episode_steps=25)


def checked_pendulum():
    return InvariantWrapper(short_pendulum(), [invariants.finite(), invariants.obs_bounds()])


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # The factories below live in this test module: let the workers import it, as a user's
    # workers import the module that defines theirs.
    here = Path(__file__).parent
    path = os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def venv():
    # actors of 2 and 1 envs
    env = RayVecEnv([checked_pendulum] * 3, envs_per_actor=2, actor_options=HALF)
    yield env
    env.close()


def test_steps_match_dummy_vec_env_with_autoreset(venv):
    dummy = DummyVecEnv([checked_pendulum] * 3)
    venv.seed(7)
    dummy.seed(7)
    np.testing.assert_allclose(venv.reset(), dummy.reset())
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(60):
        actions = rng.uniform(-2, 2, size=(3, 1)).astype(np.float32)
        obs, rewards, dones, infos = venv.step(actions)
        obs_d, rewards_d, dones_d, infos_d = dummy.step(actions)
        np.testing.assert_allclose(obs, obs_d, rtol=1e-6)
        np.testing.assert_allclose(rewards, rewards_d, rtol=1e-6)
        np.testing.assert_array_equal(dones, dones_d)
        for info, info_d in zip(infos, infos_d, strict=True):
            assert info["TimeLimit.truncated"] == info_d["TimeLimit.truncated"]
            if "terminal_observation" in info_d:
                np.testing.assert_allclose(info["terminal_observation"],
                                           info_d["terminal_observation"], rtol=1e-6)
                ends += 1
            assert info["physlink"]["valid"] == info_d["physlink"]["valid"]
    assert ends == 6  # two resets per env in 60 steps of 25-step episodes


def test_vec_env_plumbing_and_merged_reports(venv):
    venv.reset()
    venv.step(np.zeros((3, 1), np.float32))
    assert [s.id for s in venv.get_attr("spec")] == ["Pendulum-v1"] * 3
    assert venv.get_attr("spec", indices=[2])[0].id == "Pendulum-v1"
    venv.set_attr("marker", 5, indices=[1])
    assert venv.get_attr("marker", indices=[1]) == [5]
    assert venv.env_is_wrapped(InvariantWrapper) == [True, True, True]
    reports = venv.env_method("compliance_report")
    merged = ComplianceReport.merge(reports)
    assert merged.env_count == 3 and merged.steps >= 3


def test_a_killed_actor_truncates_its_episodes_and_training_goes_on():
    venv = RayVecEnv([short_pendulum] * 2, envs_per_actor=1, actor_options=HALF)

    class KillOnce(BaseCallback):
        def _on_step(self):
            if self.num_timesteps == 40:
                ray.kill(venv._actors[1])  # as if its node went away
            return True

    seen = []

    class Watch(BaseCallback):
        def _on_step(self):
            for done, info in zip(self.locals["dones"], self.locals["infos"], strict=True):
                if info.get("actor_restarted"):
                    seen.append((bool(done), info["TimeLimit.truncated"]))
            return True

    model = SAC("MlpPolicy", venv, learning_starts=20, seed=0)
    with pytest.warns(RuntimeWarning, match="restarted"):
        model.learn(80, callback=[KillOnce(), Watch()])
    assert model.num_timesteps == 80
    assert venv.actor_restarts == 1
    assert seen == [(True, True)]  # one sub-env's episode ended as truncated
    venv.close()


def faulty_pendulum():
    return InvariantWrapper(PendulumFaults(short_pendulum(), seed=0),
                            [invariants.finite(), invariants.obs_bounds()])


def test_dreamerv3_collects_through_ray_and_keeps_the_flags():
    venv = RayVecEnv([faulty_pendulum] * 2, envs_per_actor=2, actor_options=HALF)
    model = DreamerV3("MlpPolicy", venv, preset="debug", learning_starts=32, batch_size=4,
                      sequence_length=16, train_ratio=64, seed=0)
    model.learn(64)
    assert model.num_timesteps == 64 and model._n_updates > 0
    replay = model.replay_buffer
    valid = np.concatenate([replay.valid[i, : int(replay._count[i])] for i in range(2)])
    assert valid.size >= 64  # every step, plus the last observation of each ended episode
    assert 0 < (~valid).sum() < 16  # the flagged transitions (NaN, |w| > 8) stored as invalid
    venv.close()


def test_bad_arguments_and_a_missing_extra_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigurationError, match="env factories"):
        RayVecEnv([])
    with pytest.raises(ConfigurationError, match="envs_per_actor"):
        RayVecEnv([short_pendulum], envs_per_actor=0)
    with pytest.raises(ConfigurationError, match="not started after"):  # cannot be placed
        RayVecEnv([short_pendulum], actor_options={"num_cpus": 3}, start_timeout=2)
    with pytest.raises(ConfigurationError, match="same spaces"):
        RayVecEnv([short_pendulum, lambda: gym.make("CartPole-v1")], actor_options=HALF)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigurationError, match=r"physlink-gym\[ray\]"):
        RayVecEnv([short_pendulum])
