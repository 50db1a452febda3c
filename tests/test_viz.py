"""The world-model triptych GIF and the TensorBoard callbacks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import physlink_gym.envs  # noqa: F401  (registers physlink/DampedPendulum-v0)
from physlink_gym import DreamerV3, InvariantWrapper, invariants, register_invariant
from physlink_gym._viz_draw import write_triptych_gif
from physlink_gym.data import record_trajectories
from physlink_gym.errors import ValidationError
from physlink_gym.viz import (
    PANEL_WIDTH_PX,
    ComplianceCallback,
    TriptychCallback,
    learner_actions,
    open_loop_prediction,
    triptych,
)

TIMESTEPS = 64


def _wrapped_pendulum() -> InvariantWrapper:
    env = InvariantWrapper(
        gym.make("Pendulum-v1", max_episode_steps=30),
        [invariants.finite(), invariants.action_bounds()],
    )
    # A residual that is positive on most steps, so the histogram has data.
    register_invariant(env, "speed", lambda t: abs(float(t["next_obs"][2])), tolerance=4.0,
                       mode="soft")  # fmt: skip
    return env


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A debug DreamerV3 trained for 64 steps with both callbacks, and its outputs."""
    tmp = tmp_path_factory.mktemp("viz")
    model = DreamerV3(
        "MlpPolicy", _wrapped_pendulum(), preset="debug", batch_size=4, sequence_length=16,
        train_ratio=32, learning_starts=32, seed=0, tensorboard_log=str(tmp / "tb"),
    )  # fmt: skip
    tri = TriptychCallback(gym.make("Pendulum-v1"), every_n_steps=40, path_dir=tmp / "gifs",
                           steps=8)  # fmt: skip
    comp = ComplianceCallback(every_n_steps=32)
    model.learn(TIMESTEPS, callback=[tri, comp])
    events = sorted((tmp / "tb").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    return {"model": model, "tmp": tmp, "tri": tri, "comp": comp, "acc": acc}


def _gif(path: Path) -> tuple[tuple[int, int], int, np.ndarray]:
    with Image.open(path) as gif:
        size, n = gif.size, gif.n_frames
        gif.seek(n - 1)
        return size, n, np.asarray(gif.convert("RGB"))


def test_triptych_gif_has_one_frame_per_step_and_three_panels(run: dict[str, Any],
                                                              tmp_path: Path) -> None:  # fmt: skip
    path = triptych(run["model"], gym.make("Pendulum-v1"), tmp_path / "sub" / "t.gif", steps=12)
    assert path == tmp_path / "sub" / "t.gif" and path.exists()
    (width, height), n_frames, last = _gif(path)
    assert n_frames == 12
    assert width == 3 * PANEL_WIDTH_PX and height < width
    third = width // 3
    left, middle = last[:, :third], last[:, third : 2 * third]
    assert not np.array_equal(left, middle)  # imagined panel is not a copy of the real one


def test_open_loop_prediction_differs_from_real_and_is_seeded(run: dict[str, Any]) -> None:
    model = run["model"]
    data = record_trajectories(gym.make("Pendulum-v1"), n_steps=20, seed=1)
    acts = learner_actions(model, data.action)
    before = torch.get_rng_state()
    pred = open_loop_prediction(model, data.obs, acts, context=5, seed=3)
    assert torch.equal(before, torch.get_rng_state())  # global RNG untouched
    assert pred.shape == data.obs.shape and np.isfinite(pred).all()
    assert np.abs(pred - data.obs).max() > 1e-3
    np.testing.assert_array_equal(pred, open_loop_prediction(model, data.obs, acts, seed=3))
    other = open_loop_prediction(model, data.obs, acts, context=5, seed=4)
    assert not np.array_equal(pred[5:], other[5:])  # open-loop latents are sampled


def test_triptych_from_trajectories(run: dict[str, Any], tmp_path: Path) -> None:
    data = record_trajectories(gym.make("Pendulum-v1"), n_steps=30, seed=0)
    _, n_frames, _ = _gif(triptych(run["model"], data, tmp_path / "d.gif", steps=10, fps=5))
    assert n_frames == 10


def test_triptych_shows_rendered_frames(tmp_path: Path) -> None:
    env = gym.make("physlink/DampedPendulum-v0", render_mode="rgb_array")
    model = DreamerV3("MlpPolicy", env, preset="debug", seed=0)
    (w1, h1), n1, _ = _gif(triptych(model, env, tmp_path / "f.gif", steps=6))
    plain = gym.make("physlink/DampedPendulum-v0")
    (w2, h2), n2, _ = _gif(triptych(model, plain, tmp_path / "p.gif", steps=6))
    assert (n1, n2) == (6, 6) and w1 == w2
    assert h1 > h2  # the rendered frame sits above the real plot


def test_many_dimensions_are_drawn_as_heat_maps(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(9, 12)).cumsum(0)
    path = write_triptych_gif(real + 1.0, real, None, 3, [f"x{i}" for i in range(12)],
                              tmp_path / "h.gif", fps=10, dpi=80, panel_inches=4.5)  # fmt: skip
    (width, _), n_frames, last = _gif(path)
    assert (width, n_frames) == (3 * PANEL_WIDTH_PX, 9)
    assert len(np.unique(last.reshape(-1, 3), axis=0)) > 20  # coloured cells, not blank


def test_learner_actions_rescale_box_and_one_hot_discrete() -> None:
    box = DreamerV3("MlpPolicy", "Pendulum-v1", preset="debug")
    np.testing.assert_allclose(learner_actions(box, np.array([[-2.0], [0.0], [2.0], [3.0]]))[:, 0],
                               [-1.0, 0.0, 1.0, 1.0])  # fmt: skip
    disc = DreamerV3("MlpPolicy", "CartPole-v1", preset="debug")
    np.testing.assert_array_equal(learner_actions(disc, np.array([[1.0], [0.0]])),
                                  [[0.0, 1.0], [1.0, 0.0]])  # fmt: skip


def test_bad_arguments_raise(run: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="steps"):
        triptych(run["model"], gym.make("Pendulum-v1"), tmp_path / "x.gif", steps=1)
    with pytest.raises(ValidationError, match="every_n_steps"):
        TriptychCallback(gym.make("Pendulum-v1"), every_n_steps=0, path_dir=tmp_path)


def test_triptych_callback_writes_gifs_and_logs_the_image(run: dict[str, Any]) -> None:
    paths = run["tri"].paths
    assert [p.name for p in paths] == ["triptych_40.gif", f"triptych_{TIMESTEPS}.gif"]
    assert all(p.exists() for p in paths)
    images = run["acc"].Images("world_model/triptych")
    assert [im.step for im in images] == [40, TIMESTEPS]
    assert images[0].width == 3 * PANEL_WIDTH_PX


def test_one_tag_scheme_and_no_chart_for_invariants_that_never_fired(run: dict[str, Any]) -> None:
    acc = run["acc"]
    tags = acc.Tags()
    scalars = [t for t in tags["scalars"] if t.startswith("invariants/")]
    # "speed" (soft) fires; finite and action_bounds never do, so they add no chart.
    assert sorted(scalars) == ["invariants/cost", "invariants/invalid_rate",
                               "invariants/violation_rate/speed"]
    assert not [t for t in tags["scalars"] if t.startswith("compliance/")]
    assert "invariants/residual/speed" in tags["histograms"]
    assert "invariants/plot" in tags["images"]
    steps = [e.step for e in acc.Scalars("invariants/violation_rate/speed")]
    assert steps[-1] == TIMESTEPS  # learn() flushes its last window
    final = acc.Scalars("hparams/final_return")[-1].value
    assert math.isfinite(final) and final < 0.0  # Pendulum rewards are negative
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    report = run["comp"].report
    assert report.steps == TIMESTEPS and report["speed"].checked == TIMESTEPS
    rates = acc.Scalars("invariants/violation_rate/speed")
    assert 0.0 < rates[-1].value <= 1.0


def test_image_only_dumps_do_not_warn_on_a_stdout_logger(run: dict[str, Any],
                                                         tmp_path: Path) -> None:
    import warnings

    from stable_baselines3.common.logger import configure

    model = run["model"]
    previous = model.logger
    model.set_logger(configure(str(tmp_path), ["stdout"]))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run["tri"].write()  # records only an image, which stdout excludes
            run["comp"].log_report()
    finally:
        model.set_logger(previous)
    assert not [w for w in caught if "empty key-value" in str(w.message)]
