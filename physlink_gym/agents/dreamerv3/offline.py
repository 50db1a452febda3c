"""Training DreamerV3 on collected trajectories, and world-model losses on held-out data.

:func:`fit` loads a :class:`~physlink_gym.data.Trajectories` into the model's sequence replay and
runs the usual updates (world model, then actor and critic in imagination) on replay windows.
:func:`world_model_loss` measures the world-model losses on trajectories without training, so a
user can check that fitting generalises to held-out episodes.

Conversions from the trajectory format (actions as sent to the env) to the learner's:

* Discrete actions are stored as indices ``[N, 1]``; the learner wants one-hot ``[N, n]``.
* Box actions are stored in env units; the learner acts in ``[-1, 1]`` and the policy rescales
  to the env's bounds (:meth:`DreamerV3Policy.to_env_action`), so they are mapped back with
  :meth:`DreamerV3Policy.to_learner_action` (a dimension with ``low == high`` maps to 0).
* ``is_first`` entries carry no action (zeros), as in the replay's entry format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from stable_baselines3.common.utils import configure_logger

from physlink_gym.callbacks import ProgressBar
from physlink_gym.errors import ValidationError, check_int

if TYPE_CHECKING:
    from physlink_gym.agents.dreamerv3.algorithm import DreamerV3
    from physlink_gym.agents.dreamerv3.policy import DreamerV3Policy
    from physlink_gym.data.trajectories import Trajectories

__all__ = ["fit", "learner_entries", "world_model_loss"]

#: World-model loss terms of :meth:`DreamerV3Learner.compute_losses`.
WORLD_MODEL_TERMS = ("dyn", "rep", "dec", "rew", "con")


def check_trajectories(data: object, what: str) -> None:
    """Refuse anything but a :class:`~physlink_gym.data.Trajectories` with a clear error."""
    from physlink_gym.data.trajectories import Trajectories

    if not isinstance(data, Trajectories):
        raise ValidationError(
            got=f"{what}({data!r:.80}) ({type(data).__name__})",
            expected="a physlink_gym.data.Trajectories",
            fix="load a file with Trajectories.load(path), or build one with "
            "Trajectories.from_list(episodes) / Trajectories.from_minari(dataset_id)",
        )


def learner_entries(policy: DreamerV3Policy, data: Trajectories) -> dict[str, np.ndarray]:
    """Trajectory entries in the learner's action space, ready for ``add_entries``.

    Raises:
        ValidationError: Observation or action widths do not match the policy's spaces.
    """
    entries = data.as_dict()
    obs, action = entries["obs"], entries["action"]
    width = policy.env_action_width
    if obs.shape[1] != policy.obs_dim or action.shape[1] != width:
        raise ValidationError(
            got=f"trajectories with obs width {obs.shape[1]} and action width {action.shape[1]}",
            expected=f"obs width {policy.obs_dim} and action width {width} (this model's spaces)",
            fix="record the trajectories on the env the model was built for",
        )
    converted = policy.to_learner_action(action)
    converted = np.where(entries["is_first"][:, None], 0.0, converted).astype(np.float32)
    return {**entries, "action": converted}


def _load_into_replay(model: DreamerV3, data: Trajectories) -> None:
    """Append the trajectories to replay stream 0; the online stream restarts afterwards."""
    assert model.replay_buffer is not None
    entries = learner_entries(model.policy, data)
    model.replay_buffer.add_entries(entries, env_index=0)
    # The next online entry must not read as the continuation of the last trajectory.
    model._policy_state = None
    model._entries = None


def fit(
    model: DreamerV3,
    data: Trajectories,
    gradient_steps: int,
    *,
    batch_size: int | None = None,
    sequence_length: int | None = None,
    progress_bar: bool = False,
    tb_log_name: str = "DreamerV3_fit",
    log_interval: int = 100,
) -> None:
    """Implementation of :meth:`DreamerV3.fit` (see there)."""
    check_trajectories(data, "fit")
    check_int("gradient_steps", gradient_steps, minimum=0)
    check_int("log_interval", log_interval, minimum=1)
    _load_into_replay(model, data)
    assert model.replay_buffer is not None
    length = sequence_length or model.config.batch_length
    if gradient_steps and not model.replay_buffer.can_sample(length):
        raise ValidationError(
            got=f"{len(data)} trajectory entries for windows of length {length}",
            expected=f"at least {length} entries",
            fix="pass more trajectories or a shorter sequence_length",
        )
    if not model._custom_logger:
        model._logger = configure_logger(
            model.verbose, model.tensorboard_log, tb_log_name, reset_num_timesteps=True
        )
    model._plan_compile(gradient_steps)
    bar = ProgressBar(total=gradient_steps, desc="fit") if progress_bar else None
    if bar is not None:  # the same bar as learn(progress_bar=True), counting updates
        bar.init_callback(model)
        bar.on_training_start({}, {})
    for step in range(1, gradient_steps + 1):
        model.train(1, batch_size=batch_size, sequence_length=sequence_length)
        if bar is not None:
            bar.tick(1)
        if step % log_interval == 0 or step == gradient_steps:
            model.logger.record("train/fit_updates", step)
            model.record_update_metrics()
            model.logger.dump(step=model._n_updates)
    if bar is not None:
        bar.on_training_end()


def _windows(entries: dict[str, np.ndarray], length: int) -> dict[str, torch.Tensor]:
    """Cut one entry stream into consecutive ``[B, length]`` windows (tail padded invalid)."""
    n = entries["reward"].shape[0]
    count = -(-n // length)
    pad = count * length - n
    out: dict[str, torch.Tensor] = {}
    for key in ("obs", "action", "reward", "is_first", "is_terminal", "valid"):
        value = entries[key]
        value = np.concatenate([value, np.zeros((pad, *value.shape[1:]), value.dtype)])
        out[key] = torch.as_tensor(value.reshape(count, length, *value.shape[1:]))
    return out


def world_model_loss(
    model: DreamerV3, data: Trajectories, sequence_length: int | None = None, seed: int = 0
) -> dict[str, float]:
    """World-model losses of ``model`` on ``data``, without gradients or side effects.

    The entries are cut into consecutive windows of ``sequence_length`` (the config's when
    None), flagged entries are masked as in training, and the losses of
    :meth:`DreamerV3Learner.compute_losses` are averaged over valid entries. Latent sampling
    uses a private torch generator state seeded with ``seed`` (the global RNG is untouched),
    so the figure is reproducible.

    Returns:
        ``{"dyn", "rep", "dec", "rew", "con"}`` and ``"total"`` (their sum with the config's
        loss scales).
    """
    check_trajectories(data, "world_model_loss")
    learner = model.policy.learner
    length = sequence_length or model.config.batch_length
    batch = _windows(learner_entries(model.policy, data), length)
    was_training = learner.training
    retnorm = {k: v.clone() for k, v in learner.retnorm.state_dict().items()}
    learner.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            losses, _ = learner.compute_losses(learner.prepare_batch(batch))
    finally:  # compute_losses also updates the return normaliser: undo that
        learner.retnorm.load_state_dict(retnorm)
        learner.train(was_training)
    scales = model.config.loss_scales
    out = {key: float(losses[key]) for key in WORLD_MODEL_TERMS}
    out["total"] = sum(scales[key] * out[key] for key in WORLD_MODEL_TERMS)
    return out
