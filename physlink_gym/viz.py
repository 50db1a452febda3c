"""What the world model imagines, as a GIF, and TensorBoard callbacks for training runs.

:func:`triptych` writes a GIF of three panels side by side: the world model's **open-loop
imagination** from a real start state under the real actions, the **real** trajectory, and
their **difference** (imagined − real). :class:`TriptychCallback` writes one at an interval
during ``learn()`` and logs its last frame to TensorBoard; :class:`ComplianceCallback` logs the
invariant compliance of the training envs (rates, residual histograms, the plot, hparams).

matplotlib is imported lazily, with the Agg backend; nothing here opens a window.

Example:
    >>> import tempfile
    >>> import gymnasium as gym
    >>> from physlink_gym import DreamerV3
    >>> model = DreamerV3("MlpPolicy", "Pendulum-v1", preset="debug", seed=0)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = triptych(model, gym.make("Pendulum-v1"), f"{tmp}/pendulum.gif", steps=4)
    ...     print(path.name, path.stat().st_size > 0)
    pendulum.gif True
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HParam, Image
from stable_baselines3.common.utils import safe_mean

from physlink_gym._viz_draw import hparams_of
from physlink_gym.agents.dreamerv3.distributions import symexp
from physlink_gym.errors import ValidationError

__all__ = [
    "PANEL_WIDTH_PX",
    "ComplianceCallback",
    "TriptychCallback",
    "compliance_figure",
    "figure_to_array",
    "learner_actions",
    "open_loop_prediction",
    "triptych",
]

_DPI = 80
_PANEL_INCHES = 4.5
#: Width of one triptych panel in the GIF, in pixels (the GIF is three of them wide).
PANEL_WIDTH_PX = int(_DPI * _PANEL_INCHES)
_NOT_TEXT = ("stdout", "log", "json", "csv")  # images/histograms go to TensorBoard only


# ------------------------------------------------------------------ the world model's view
def learner_actions(model: Any, env_actions: np.ndarray) -> np.ndarray:
    """Map env actions ``[T, A]`` to the learner's space: ``[-1, 1]`` for a Box, one-hot else.

    Args:
        model: A :class:`~physlink_gym.DreamerV3` (its ``action_space`` is used).
        env_actions: Actions as sent to the env (a Discrete index may be ``[T]`` or ``[T, 1]``).

    Returns:
        ``[T, A]`` float32 actions as the world model was trained on them.
    """
    converted: np.ndarray = model.policy.to_learner_action(np.asarray(env_actions))
    return converted


@torch.no_grad()
def open_loop_prediction(
    model: Any, obs: np.ndarray, actions: np.ndarray, *, context: int = 5, seed: int = 0
) -> np.ndarray:
    """Decoded world-model prediction of ``obs`` (raw scale), open loop after ``context`` steps.

    The first ``context`` steps are the posterior's reconstruction (the model sees those
    observations); from then on the prior is rolled forward under the real actions alone
    (reference ``RSSM.imagine`` with given actions) and decoded with ``symexp(decoder(.))``.

    Args:
        model: A :class:`~physlink_gym.DreamerV3` (``model.policy.learner`` is used).
        obs: Real observations ``[T, D]`` of one episode, starting at its first step.
        actions: Learner-space actions ``[T, A]`` (:func:`learner_actions`); ``actions[t]``
            led into ``obs[t]`` (``actions[0]`` is ignored).
        context: Observed steps before the open-loop rollout (clipped to ``[1, T]``).
        seed: Seeds the latent samples; the global torch RNG is left untouched.

    Returns:
        ``[T, D]`` float32 predictions.
    """
    learner = model.policy.learner
    dev = learner.device
    length = len(obs)
    context = int(np.clip(context, 1, length))
    obs_t = torch.as_tensor(np.asarray(obs, np.float32), device=dev).reshape(1, length, -1)
    act_t = torch.as_tensor(np.asarray(actions, np.float32), device=dev).reshape(1, length, -1)
    first = torch.zeros(1, context, dtype=torch.bool, device=dev)
    first[:, 0] = True
    was_training = learner.training
    learner.eval()
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            embed = learner.encoder(obs_t[:, :context])
            post, _ = learner.rssm.observe(
                embed, act_t[:, :context], first, learner.rssm.initial(1)
            )
            feats = [torch.cat([post.deter, post.stoch], -1)[0]]
            state = (post.deter[:, -1], post.stoch[:, -1])
            for t in range(context, length):
                state = learner.rssm.img_step(state, act_t[:, t])
                feats.append(torch.cat(state, -1))
            pred = symexp(learner.decoder(torch.cat(feats, 0)).float())
    finally:
        learner.train(was_training)
    out: np.ndarray = pred.cpu().numpy().astype(np.float32)
    return out


def _segment_from_trajectories(data: Any, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``steps`` entries of the first episode with at least two entries."""
    for episode in data.episodes():
        if len(episode) >= 2:
            obs = np.asarray(episode.obs[:steps], np.float32)
            return obs.reshape(len(obs), -1), np.asarray(episode.action[:steps])
    raise ValidationError(
        got=f"trajectories with {data.num_episodes} episodes, none with two entries",
        expected="at least one episode with a start state and one step",
        fix="record longer episodes (record_trajectories(env, n_steps=...))",
    )


def _segment_from_env(
    model: Any, env: Any, steps: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]:
    """Roll ``model`` (deterministic) in ``env`` for up to ``steps`` entries; render if able."""
    if hasattr(env, "envs"):  # a DummyVecEnv: use its first env
        env = env.envs[0]
    if not hasattr(env, "reset") or hasattr(env, "num_envs"):
        raise ValidationError(
            got=f"{type(env).__name__}", expected="a single gymnasium env or Trajectories",
            fix="pass gym.make(env_id) (not a SubprocVecEnv), or recorded Trajectories",
        )  # fmt: skip
    obs, _ = env.reset(seed=seed)
    observations = [np.asarray(obs, np.float32).reshape(-1)]
    actions = [np.zeros(np.shape(env.action_space.sample()) or (1,), np.float32)]
    frames: list[np.ndarray] | None = [] if env.render_mode == "rgb_array" else None
    frames = _add_frame(env, frames)
    state, start = None, np.array([True])
    while len(observations) < steps:
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        start = np.array([False])
        obs, _, terminated, truncated, _ = env.step(action)
        observations.append(np.asarray(obs, np.float32).reshape(-1))
        actions.append(np.asarray(action, np.float32).reshape(-1))
        frames = _add_frame(env, frames)
        if terminated or truncated:
            break
    return np.stack(observations), np.stack(actions), frames


def _add_frame(env: Any, frames: list[np.ndarray] | None) -> list[np.ndarray] | None:
    """Append ``env.render()``; give up on frames (None) if rendering fails."""
    if frames is None:
        return None
    try:
        frame = env.render()
    except Exception:  # no display / OpenGL: show vectors only
        return None
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        return None
    frames.append(frame)
    return frames


def triptych(
    model: Any,
    env_or_trajectories: Any,
    path: str | Path,
    *,
    steps: int = 64,
    fps: int = 10,
    seed: int = 0,
    context: int = 5,
    dim_names: Sequence[str] | None = None,
    invariants: Sequence[Any] | None = None,
) -> Path:
    """Write a GIF: imagined | real | imagined − real, one frame per time step.

    The model observes the first ``context`` real steps (posterior), then imagines the rest
    open loop under the real actions (prior only, no observations). Vector observations are
    drawn per dimension over time: line plots growing over time for up to 8 dimensions, and a
    heat-map strip per dimension (standardised by the real data's mean and std) above that.
    Real and imagined panels share their y-limits (or colour scale).

    When ``env_or_trajectories`` is an env with ``render_mode="rgb_array"``, the real panel
    also shows the rendered frame. The world model has no pixel decoder for vector envs, so
    the imagined panel can only show the decoded *state* prediction, not imagined frames.

    Args:
        model: A :class:`~physlink_gym.DreamerV3`.
        env_or_trajectories: A single gymnasium env (the model acts in it, deterministic) or
            :class:`~physlink_gym.data.Trajectories` (the first episode is used; actions as
            recorded).
        path: Where to write the GIF (parent folders are created).
        steps: Time steps shown, including the ``context`` (fewer if the episode ends).
        fps: GIF frames per second.
        seed: Seeds the env reset and the imagined latent samples.
        context: Real steps observed before the open-loop rollout.
        dim_names: Names of the observation dimensions (default ``obs[i]``).
        invariants: Transition-only invariants to score the imagined steps with: a frame
            whose imagined transition violates one names it in red under the panels (see
            :meth:`DreamerV3.imagination_report <physlink_gym.DreamerV3.imagination_report>`).

    Returns:
        The path of the GIF. It has one frame per shown time step and is
        ``3 * PANEL_WIDTH_PX`` pixels wide.
    """
    if isinstance(steps, bool) or int(steps) < 2:
        raise ValidationError(got=f"steps={steps!r}", expected="an int >= 2",
                              fix="pass steps=64")  # fmt: skip
    frames = None
    if hasattr(env_or_trajectories, "episodes") and hasattr(env_or_trajectories, "obs"):
        obs, env_actions = _segment_from_trajectories(env_or_trajectories, int(steps))
    else:
        with torch.random.fork_rng(devices=[]):
            obs, env_actions, frames = _segment_from_env(
                model, env_or_trajectories, int(steps), seed
            )
    pred = open_loop_prediction(
        model, obs, learner_actions(model, env_actions), context=context, seed=seed
    )
    from physlink_gym._viz_draw import write_triptych_gif

    marks = None
    if invariants:
        marks = _imagination_marks(model, pred, env_actions, int(context), invariants,
                                   env_or_trajectories)

    names = list(dim_names) if dim_names is not None else [f"obs[{i}]" for i in range(obs.shape[1])]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_triptych_gif(
        pred,
        obs,
        frames,
        min(max(int(context), 1), len(obs)),
        names,
        path,
        fps=fps,
        dpi=_DPI,
        panel_inches=_PANEL_INCHES,
        marks=marks,
    )


def _imagination_marks(model: Any, pred: np.ndarray, env_actions: np.ndarray, context: int,
                       invariants: Sequence[Any], source: Any) -> list[str]:
    """Per shown step: the invariants its imagined transition violates ("" if none)."""
    import warnings

    from physlink_gym._audit import audit
    from physlink_gym.agents.dreamerv3.imagination import _as_trajectories, split_transition_only

    context = min(max(context, 1), len(pred))
    marks = [""] * len(pred)
    usable, _ = split_transition_only(invariants)
    if not usable or context >= len(pred):
        return marks
    acts = learner_actions(model, np.asarray(env_actions)[context:])
    imagined = _as_trajectories(model, pred[None, context - 1:], acts[None],
                                np.zeros((1, len(pred) - context), np.float32))
    from physlink_gym._audit import env_from_meta

    env = env_from_meta(source) if hasattr(source, "episodes") else source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, report = audit(imagined, usable, env=env, all_residuals=True,
                          observation_space=model.observation_space,
                          action_space=model.action_space)
    for inv in report.invariants:
        for worst in inv.worst:  # [residual, episode, step, env]: step t → entry context + t
            t = context + int(worst[2])
            if 0 <= t < len(marks):
                marks[t] = f"{marks[t]}, {inv.name}" if marks[t] else inv.name
    return [f"imagined step violates: {m}" if m else "" for m in marks]


def figure_to_array(fig: Any) -> np.ndarray:
    """Render a matplotlib Figure to an ``[H, W, 3]`` uint8 array (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas: Any = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    out: np.ndarray = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return out


def compliance_figure(report: Any) -> Any:
    """The compliance plot (also logged as ``compliance/plot``): a matplotlib Figure.

    One residual histogram per invariant on a log axis, with the tolerance as a dashed line
    and the bins above it in red; the title gives the status and violation count. Unlike
    :meth:`ComplianceReport.plot`, invariants whose residuals were all zero get a line of
    text instead of empty axes.
    """
    from physlink_gym._viz_draw import draw_compliance

    return draw_compliance(report)


# ----------------------------------------------------------------------- SB3 callbacks
class TriptychCallback(BaseCallback):
    """Every ``every_n_steps`` env steps, write a triptych GIF and log its last frame.

    GIFs go to ``path_dir/triptych_<num_timesteps>.gif`` (by default the ``triptych`` folder
    inside the run's TensorBoard folder, so two runs in one ``--logdir`` keep their own); the
    still image is logged to TensorBoard as ``world_model/triptych`` (SB3 ``Image``). One more
    is written at the end.

    Args:
        env: A single gymnasium env for the evaluation rollout (not the training env), or
            :class:`~physlink_gym.data.Trajectories`.
        every_n_steps: Interval in env steps (counted like ``model.num_timesteps``).
        path_dir: Folder for the GIFs; None: ``<run folder>/triptych`` (``./triptych`` when the
            model logs nowhere).
        steps: Time steps per GIF (see :func:`triptych`).
        fps: GIF frames per second.
        verbose: 1 prints the path of every GIF written.
    """

    def __init__(self, env: Any, every_n_steps: int, path_dir: str | Path | None = None, *,
                 steps: int = 64, fps: int = 10, verbose: int = 0) -> None:  # fmt: skip
        super().__init__(verbose)
        if isinstance(every_n_steps, bool) or int(every_n_steps) < 1:
            raise ValidationError(
                got=f"every_n_steps={every_n_steps!r}", expected="an int >= 1",
                fix="pass every_n_steps=5000",
            )  # fmt: skip
        self.env, self.every_n_steps = env, int(every_n_steps)
        self.path_dir = None if path_dir is None else Path(path_dir)
        self.steps, self.fps = steps, fps
        self.paths: list[Path] = []
        self._last = 0

    def _on_training_start(self) -> None:
        if self.path_dir is None:
            self.path_dir = Path(self.model.logger.get_dir() or ".") / "triptych"

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last >= self.every_n_steps:
            self.write()
        return True

    def _on_training_end(self) -> None:
        if self._last != self.num_timesteps:
            self.write()

    def write(self) -> Path:
        """Write a GIF now, log its last frame, dump the logger; return the GIF's path."""
        self._last = self.num_timesteps
        folder = self.path_dir or Path(self.model.logger.get_dir() or ".") / "triptych"
        path = triptych(self.model, self.env, folder / f"triptych_{self.num_timesteps}.gif",
                        steps=self.steps, fps=self.fps)  # fmt: skip
        from PIL import Image as PILImage

        with PILImage.open(path) as gif:
            gif.seek(gif.n_frames - 1)
            still = np.asarray(gif.convert("RGB"))
        self.logger.record("world_model/triptych", Image(still, "HWC"), exclude=_NOT_TEXT)
        _dump(self.logger, self.num_timesteps)
        self.paths.append(path)
        if self.verbose:
            print(f"triptych: {path}")
        return path


class ComplianceCallback(BaseCallback):
    """Log the training envs' :class:`~physlink_gym.ComplianceReport` to TensorBoard.

    The report is merged over the VecEnv's sub-envs (``env_method("compliance_report")``) and
    covers the whole run so far. It logs the image ``invariants/plot`` (one residual histogram
    per invariant with its tolerance, IMAGES tab) and, at the end of training,
    ``hparams/final_return``, ``hparams/invalid_rate`` and the hyperparameters (SB3
    ``HParam``). The per-window rates (``invariants/...`` scalars) come from DreamerV3 itself or,
    for other algorithms, :class:`~physlink_gym.callbacks.InvariantCallback`.

    Args:
        every_n_steps: Log every this many env steps; ``None`` logs at the end only.
        verbose: 1 prints the summary at the end.
    """

    def __init__(self, every_n_steps: int | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.every_n_steps = every_n_steps
        self.report: Any = None
        self._last = 0

    def _on_step(self) -> bool:
        if self.every_n_steps and self.num_timesteps - self._last >= self.every_n_steps:
            self.log_report()
        return True

    def _on_training_end(self) -> None:
        report = self.report
        if report is None or self._last != self.num_timesteps:
            report = self.log_report(dump=False)
        self._log_hparams(report)
        _dump(self.logger, self.num_timesteps)
        if self.verbose and report is not None:
            print(report.summary())

    def merged_report(self) -> Any:
        """The sub-envs' reports merged, or None when the envs are not InvariantWrapper-ed."""
        from physlink_gym.report import ComplianceReport

        try:
            reports = self.training_env.env_method("compliance_report")
        except AttributeError:
            return None
        return ComplianceReport.merge(reports)

    def log_report(self, dump: bool = True) -> Any:
        """Record the plot of the current report; return the report."""
        import matplotlib.pyplot as plt

        self._last = self.num_timesteps
        report = self.report = self.merged_report()
        if report is None:
            return None
        fig = compliance_figure(report)
        self.logger.record("invariants/plot", Image(figure_to_array(fig), "HWC"),
                           exclude=_NOT_TEXT)  # fmt: skip
        plt.close(fig)
        if dump:
            _dump(self.logger, self.num_timesteps)
        return report

    def _log_hparams(self, report: Any) -> None:
        model = self.model
        buffer: Any = model.ep_info_buffer or []
        final = float(safe_mean([ep["r"] for ep in buffer])) if len(buffer) else float("nan")
        metrics = {"hparams/final_return": final}
        if report is not None and report.steps:
            metrics["hparams/invalid_rate"] = report.invalid_steps / report.steps
        for tag, value in metrics.items():
            self.logger.record(tag, value)
        self.logger.record("hparams", HParam(hparams_of(model), metrics), exclude=_NOT_TEXT)


def _dump(logger: Any, step: int) -> None:
    """``logger.dump(step)`` without SB3's warning when stdout gets nothing.

    Images, histograms and hparams are excluded from the stdout table; when a dump holds only
    those, SB3's stdout writer warns "Tried to write empty key-value dict", which says nothing
    wrong to a user (TensorBoard still receives them).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Tried to write empty key-value dict")
        logger.dump(step)
