"""What a user sees in the first hour: TensorBoard tags, the console, SB3 habits, --help."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO, SAC
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from physlink_gym import DreamerV3, Invariant, InvariantWrapper, invariants
from physlink_gym.callbacks import InvariantCallback, OneLineOutput, ProgressBar
from physlink_gym.cli import main

SMALL = dict(preset="debug", batch_size=2, sequence_length=8, train_ratio=16, seed=0)


def _scalars(folder: Path) -> EventAccumulator:
    events = sorted(folder.rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[-1].parent), size_guidance={"scalars": 0,
                                                                   "histograms": 0})
    acc.Reload()
    return acc


def _wrapped(max_steps: int = 25) -> InvariantWrapper:
    speed = Invariant("speed", lambda t: abs(float(t["next_obs"][2])), tolerance=2.0)
    return InvariantWrapper(gym.make("Pendulum-v1", max_episode_steps=max_steps),
                            [invariants.finite(), speed])


@pytest.mark.parametrize("algo", [SAC, PPO])
def test_one_invariant_tag_scheme_for_any_sb3_algorithm(algo: Any, tmp_path: Path) -> None:
    kwargs = {"learning_starts": 10} if algo is SAC else {"n_steps": 50, "batch_size": 25}
    model = algo("MlpPolicy", _wrapped(), tensorboard_log=str(tmp_path), seed=0, **kwargs)
    model.learn(100, callback=InvariantCallback(), log_interval=1)
    acc = _scalars(tmp_path)
    tags = [t for t in acc.Tags()["scalars"] if t.startswith("invariants/")]
    # finite never fires: no chart for it; speed does.
    assert "invariants/violation_rate/speed" in tags
    assert "invariants/invalid_rate" in tags
    assert not [t for t in tags if "finite" in t]
    rates = [e.value for e in acc.Scalars("invariants/violation_rate/speed")]
    assert all(0.0 <= r <= 1.0 for r in rates) and max(rates) > 0
    assert "invariants/residual/speed" in acc.Tags()["histograms"]


def test_dreamerv3_logs_the_same_scheme_once_lr_once_and_flushes_at_the_end(
    tmp_path: Path,
) -> None:
    model = DreamerV3("MlpPolicy", _wrapped(), learning_starts=20, tensorboard_log=str(tmp_path),
                      **SMALL)
    model.learn(60)  # shorter than one log interval (4 episodes of 25 steps)
    acc = _scalars(tmp_path)
    scalars = acc.Tags()["scalars"]
    assert "invariants/violation_rate/speed" in scalars
    assert "train/total_loss" in scalars  # regression: a short run left no train/ scalars
    assert "train/learning_rate" in scalars and "train/lr" not in scalars
    assert acc.Scalars("train/total_loss")[-1].step == 60


def test_success_rate_is_logged_again(tmp_path: Path) -> None:
    class Success(gym.Wrapper):  # type: ignore[type-arg]
        def step(self, action: Any) -> Any:
            obs, reward, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                info["is_success"] = True
            return obs, reward, terminated, truncated, info

    env = Success(gym.make("Pendulum-v1", max_episode_steps=10))
    model = DreamerV3("MlpPolicy", env, learning_starts=1000, tensorboard_log=str(tmp_path),
                      **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.learn(40, log_interval=1)
    assert "rollout/success_rate" in _scalars(tmp_path).Tags()["scalars"]


def test_learn_within_learning_starts_warns_once() -> None:
    model = DreamerV3("MlpPolicy", "Pendulum-v1", learning_starts=100, **SMALL)
    with pytest.warns(UserWarning, match="no update will run"):
        model.learn(50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.learn(20, reset_num_timesteps=False)  # warned already
        model.learn(200, reset_num_timesteps=False)  # it will update: no warning


def test_one_line_console() -> None:
    out = io.StringIO()
    writer = OneLineOutput(out)
    writer.write({"rollout/ep_rew_mean": -851.24, "invariants/invalid_rate": 0.0,
                  "train/n_updates": 122, "time/updates_per_second": 3.1,
                  "train/total_loss": 12.4123}, {}, step=2000)
    writer.write({"invariants/plot": object()}, {}, step=2000)  # images only: nothing printed
    assert out.getvalue().splitlines() == [
        "step 2,000 | return -851.2 | invalid 0.0% | updates 122 (3.1/s) | loss 12.4"]


def test_progress_bar_shows_updates_per_second() -> None:
    model = DreamerV3("MlpPolicy", "Pendulum-v1", learning_starts=8, **SMALL)
    bar = ProgressBar()
    model.learn(40, callback=bar)  # may take under a second: the figure comes at the end
    assert bar.bar.n == 40 and model._n_updates > 0
    assert f"{model._n_updates:,} updates (" in str(bar.bar.postfix)


def test_cli_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "(default: 10000)" in text and "(default: auto)" in text


def test_print_system_info_and_set_parameters_device(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    model = DreamerV3("MlpPolicy", "Pendulum-v1", learning_starts=10**6, **SMALL)
    model.save(tmp_path / "m")
    DreamerV3.load(tmp_path / "m", print_system_info=True)
    out = capsys.readouterr().out
    assert "== SAVED MODEL SYSTEM INFO ==" in out and "== CURRENT SYSTEM INFO ==" in out
    assert "PyTorch" in out.split("== CURRENT")[0]  # the saving machine's versions are stored
    other = DreamerV3("MlpPolicy", "Pendulum-v1", learning_starts=10**6, **{**SMALL, "seed": 1})
    other.set_parameters(str(tmp_path / "m.zip"), device="cpu")
    for a, b in zip(model.policy.parameters(), other.policy.parameters(), strict=True):
        assert a.device == b.device and bool((a == b).all())


def test_verbose_prints_the_first_update_time(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    model = DreamerV3("MlpPolicy", "Pendulum-v1", learning_starts=8, verbose=2, **SMALL)
    model.learn(12)
    assert "physlink_gym: first update:" in capsys.readouterr().err
    logging.getLogger("physlink_gym").setLevel(logging.WARNING)


def test_discrete_start_is_honoured() -> None:
    env = gym.make("CartPole-v1")
    env.action_space = gym.spaces.Discrete(2, start=5)
    model = DreamerV3("MlpPolicy", env, learning_starts=10**6, **SMALL)
    one_hot = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    assert model.policy.to_env_action(one_hot).tolist() == [5, 6]
    np.testing.assert_array_equal(model.policy.to_learner_action(np.array([5, 6])), one_hot)


def test_box_actions_never_leave_the_box() -> None:
    env = gym.make("Pendulum-v1")
    env.action_space = gym.spaces.Box(np.float32(0.1), np.float32(0.7), (1,), np.float32)
    model = DreamerV3("MlpPolicy", env, learning_starts=10**6, **SMALL)
    edges = model.policy.to_env_action(np.array([[-1.0], [1.0], [3.0]], np.float32))
    assert edges.dtype == np.float32
    assert (edges >= env.action_space.low).all() and (edges <= env.action_space.high).all()


def test_analytic_envs_float32_actions_and_frame_rate() -> None:
    import physlink_gym.envs  # noqa: F401  (registers them)

    for env_id in ("physlink/SpringMass-v0", "physlink/DampedPendulum-v0",
                   "physlink/ProjectileDrag-v0"):
        env = gym.make(env_id)
        assert env.action_space.dtype == np.float32
        assert env.metadata["render_fps"] == round(1.0 / env.unwrapped.dt)  # type: ignore[attr-defined]
