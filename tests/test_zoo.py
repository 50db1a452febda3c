"""DreamerV3 through the RL Zoo: register, train and enjoy in-process, clear errors."""

from __future__ import annotations

import inspect
import itertools
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from physlink_gym import DreamerV3, InvariantWrapper, zoo
from physlink_gym.agents.dreamerv3.config import DreamerV3Config
from physlink_gym.errors import ConfigurationError

TINY = [
    "--hyperparams", "preset:'debug'", "learning_starts:100", "train_ratio:16", "batch_size:4",
    "sequence_length:16", "buffer_size:1000",
]  # fmt: skip


@pytest.fixture
def rl_zoo3():
    """Import rl_zoo3 for one test and undo its global Gymnasium patch afterwards.

    Importing rl_zoo3 replaces ``gymnasium``'s ``TimeLimit`` (rl_zoo3/gym_patches.py) for the
    whole process; other tests should not run under that patch.
    """
    holders = [gym.wrappers, gym.wrappers.common, gym.envs.registration]
    originals = [getattr(holder, "TimeLimit", None) for holder in holders]
    module = pytest.importorskip("rl_zoo3")
    yield module
    for holder, original in zip(holders, originals, strict=True):
        if original is None:
            holder.__dict__.pop("TimeLimit", None)
        else:
            holder.TimeLimit = original


def test_register_adds_dreamerv3_to_the_table_the_zoo_scripts_share(rl_zoo3):
    import rl_zoo3.enjoy
    import rl_zoo3.train
    from rl_zoo3.utils import ALGOS

    zoo.register()
    zoo.register()  # idempotent
    assert ALGOS["dreamerv3"] is DreamerV3
    assert rl_zoo3.ALGOS is ALGOS and rl_zoo3.train.ALGOS is ALGOS
    assert list(ALGOS).count("dreamerv3") == 1


def test_register_without_rl_zoo3_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rl_zoo3.utils", None)  # import fails as if not installed
    with pytest.raises(ConfigurationError, match=r'physlink-gym\[zoo\]'):
        zoo.register()
    assert zoo.main(["train", "--env", "Pendulum-v1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "physlink-gym[zoo]"' in err


@pytest.mark.parametrize("argv", [["bogus", "--env", "Pendulum-v1"], []])
def test_unknown_or_missing_subcommand_is_one_line_and_non_zero(argv, capsys):
    before = list(sys.argv)
    assert zoo.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected 'train' or 'enjoy'" in err
    assert ("'bogus'" in err) == bool(argv)
    assert sys.argv == before


def test_hyperparams_follow_the_project_defaults_and_reads_are_copies():
    default = zoo.hyperparams["default"]
    signature = inspect.signature(DreamerV3).parameters
    assert default["train_ratio"] == DreamerV3Config.train_ratio
    assert default["preset"] == signature["preset"].default
    assert default["learning_starts"] == signature["learning_starts"].default
    entry = zoo.hyperparams["Pendulum-v1"]
    del entry["n_timesteps"]  # what the zoo's ExperimentManager does to the entry it reads
    assert zoo.hyperparams["Pendulum-v1"]["n_timesteps"] == 20_000


def test_invariant_wrapper_resolves_auto_from_the_env_id():
    env = zoo.invariant_wrapper(gym.make("Pendulum-v1"))
    assert isinstance(env, InvariantWrapper)
    env.reset(seed=0)
    info = env.step(np.zeros(1, np.float32))[-1]
    assert set(info["physlink"]["residuals"]) >= {"finite", "action_bounds", "pendulum_energy"}
    named = zoo.invariant_wrapper(gym.make("Pendulum-v1"), invariants="finite")
    named.reset(seed=0)
    assert set(named.step(np.zeros(1, np.float32))[-1]["physlink"]["residuals"]) == {"finite"}
    with pytest.raises(ConfigurationError, match="no registered env id"):
        zoo.invariant_wrapper(PendulumEnv())


def test_train_then_enjoy_through_the_zoo(rl_zoo3, tmp_path, monkeypatch, capsys):
    wrapped = []
    original_wrapper = zoo.invariant_wrapper

    def spy_wrapper(env, invariants="auto"):
        wrapped.append(env.spec.id)
        return original_wrapper(env, invariants)

    monkeypatch.setattr(zoo, "invariant_wrapper", spy_wrapper)  # the zoo imports it by name
    argv_before = list(sys.argv)
    code = zoo.main([
        "train", "--env", "Pendulum-v1", "-n", "300", *TINY, "learning_rate:2e-4",
        "--log-folder", str(tmp_path), "--eval-freq", "-1", "--seed", "0",
    ])  # fmt: skip
    assert code == 0 and sys.argv == argv_before
    out = capsys.readouterr().out
    assert "Loading hyperparameters from: physlink_gym.zoo" in out  # the default --conf-file
    assert wrapped == ["Pendulum-v1"]  # the Pendulum-v1 entry's env_wrapper ran
    path = tmp_path / "dreamerv3" / "Pendulum-v1_1" / "Pendulum-v1.zip"
    assert path.is_file()
    model = DreamerV3.load(path)
    assert model.num_timesteps >= 300 and model.config.preset == "debug"
    assert model.config.train_ratio == 16 and model._n_updates > 0
    # the zoo hands learning_rate over as a schedule; the checkpoint holds its value
    assert model.learning_rate == pytest.approx(2e-4) and model.config.lr == pytest.approx(2e-4)

    calls = []
    original_predict = DreamerV3.predict

    def spy_predict(self, observation, state=None, episode_start=None, deterministic=False):
        action, new_state = original_predict(self, observation, state, episode_start,
                                             deterministic)
        calls.append((state, new_state, bool(np.asarray(episode_start)[0])))
        return action, new_state

    monkeypatch.setattr(DreamerV3, "predict", spy_predict)
    code = zoo.main(["enjoy", "--env", "Pendulum-v1", "-f", str(tmp_path), "-n", "50",
                     "--no-render"])
    assert code == 0 and sys.argv == argv_before
    assert f"Loading {path}" in capsys.readouterr().out
    assert len(calls) == 50 and wrapped == ["Pendulum-v1"] * 2  # the test env is wrapped too
    assert calls[0][0] is None and calls[0][2]  # first step: no state, episode start
    for (_, previous, _), (state, _, start) in itertools.pairwise(calls):
        assert state is previous and len(state) == 3 and not start  # state threaded through
