"""From VecEnv steps to replay entries, and the update metrics for TensorBoard.

Replay entries follow Dreamer's convention: entry ``t`` holds ``obs_t``, the action that led into
it, the reward received on arriving, ``is_first``, ``is_terminal`` (a true terminal state:
truncation is not termination) and ``valid``. At an episode end the true final observation
(``info["terminal_observation"]``) is stored, then the reset observation with ``is_first``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from physlink_gym._records import find_record
from physlink_gym.agents.dreamerv3.replay import SequenceReplay
from physlink_gym.errors import TrainingError

__all__ = ["EntryWriter", "UpdateMetrics", "transition_valid"]

_LOG = logging.getLogger("physlink_gym")


def transition_valid(info: dict[str, Any]) -> bool:
    """Whether :class:`~physlink_gym.InvariantWrapper` left the transition unflagged.

    The record is found under the wrapper's ``info_key``, whatever it is (:func:`find_record`).
    Non-finite observations, actions and rewards need no check here: the replay stores those
    entries as invalid itself (vectorised, in ``SequenceReplay.add``), wrapped env or not.
    """
    record = find_record(info)
    return not (record is not None and not record.get("valid", True))


class EntryWriter:
    """Writes VecEnv transitions into a :class:`SequenceReplay` in the entry format.

    Args:
        replay: The destination replay (one stream per env).
        vec_normalize: The VecNormalize wrapper, if any: raw observations and rewards are stored.
    """

    def __init__(self, replay: SequenceReplay, vec_normalize: Any = None,
                 flatten: Any = None) -> None:
        self.replay = replay
        self.vec_normalize = vec_normalize
        # observations (a Dict's too) as float32 rows [n, obs_dim]
        self.flatten = flatten or (lambda obs: np.asarray(obs, np.float32).reshape(
            replay.n_envs if np.ndim(obs) > 1 else 1, -1))
        self._zero_action = np.zeros((replay.n_envs, replay.action_dim), dtype=np.float32)

    def start(self, raw_obs: np.ndarray) -> None:
        """Begin a new episode in every env stream with its first observation."""
        n = self.replay.n_envs
        self.replay.add(
            np.asarray(raw_obs, dtype=np.float32).reshape(n, -1), self._zero_action,
            np.zeros(n, np.float32), np.ones(n, bool), np.zeros(n, bool), np.ones(n, bool),
        )

    def add_step(
        self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray,
        infos: list[dict[str, Any]], new_obs: Any,
    ) -> None:
        """Store one vector step; episodes that ended also get their reset entry."""
        n = self.replay.n_envs
        vn = self.vec_normalize
        raw_new = self.flatten(vn.get_original_obs() if vn is not None else new_obs)
        raw_new = raw_new.reshape(n, -1)
        raw_rew = np.asarray(vn.get_original_reward() if vn is not None else rewards, np.float32)
        next_obs = raw_new.copy()
        is_terminal = np.zeros(n, dtype=bool)
        valid = np.ones(n, dtype=bool)
        ended = np.flatnonzero(dones)
        for i in ended:
            info = infos[i]
            final = info.get("terminal_observation")
            if final is not None:
                if not isinstance(final, dict):
                    final = np.asarray(final, dtype=np.float32)
                if vn is not None:
                    final = vn.unnormalize_obs(final)
                next_obs[i] = self.flatten(final).reshape(-1)
            is_terminal[i] = not info.get("TimeLimit.truncated", False)
        for j in range(n):
            valid[j] = transition_valid(infos[j])
        self.replay.add(next_obs, np.asarray(actions, np.float32).reshape(n, -1),
                        raw_rew.reshape(n), np.zeros(n, bool), is_terminal, valid)
        for i in ended:
            self.replay.add_entries(
                {
                    "obs": raw_new[i : i + 1],
                    "action": self._zero_action[:1],
                    "reward": np.zeros(1, np.float32),
                    "is_first": np.ones(1, bool),
                    "is_terminal": np.zeros(1, bool),
                    "valid": np.ones(1, bool),
                },
                env_index=int(i),
            )


class UpdateMetrics:
    """Sums the 0-d tensor metrics of updates and records their means at each log dump.

    The sums stay on the device, so no update waits for the host; the values are read once per
    log dump (``record``) and once per ``train`` call (``check_finite``, one number).
    ``skipped`` (an update dropped because its loss or a gradient was not finite) is recorded
    as a count, ``train/nonfinite_updates``; :data:`MAX_NONFINITE_RUN` in a row stop training.

    Args:
        max_run: Consecutive skipped updates that raise :class:`~physlink_gym.errors.TrainingError`.
    """

    MAX_NONFINITE_RUN = 20

    def __init__(self, max_run: int = MAX_NONFINITE_RUN) -> None:
        self.max_run = max_run
        self.names: list[str] = []
        self.total: torch.Tensor | None = None
        self.count = 0
        self.run: torch.Tensor | None = None  # skipped updates in a row, on the device
        self.skipped_total = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        """Add one update's metrics."""
        if self.total is None or list(metrics) != self.names:
            self.names = list(metrics)
            self.total = None
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in self.names])
        self.total = values if self.total is None else self.total + values
        self.count += 1
        skipped = metrics.get("skipped")
        if skipped is not None:
            self.run = skipped if self.run is None else (self.run + skipped) * skipped
            if _LOG.isEnabledFor(logging.DEBUG) and float(skipped):  # reads only at verbose 2
                _LOG.debug("an update was skipped: its loss or a gradient was not finite")

    def check_finite(self) -> None:
        """Raise once too many updates in a row had a non-finite loss or gradient."""
        if self.run is not None and int(self.run) >= self.max_run:
            raise TrainingError(
                got=f"{int(self.run)} updates in a row with a non-finite loss or gradient "
                "(each was skipped: no weight changed)",
                expected="finite losses and gradients",
                fix="check the data for extreme values (rewards, observations), lower the "
                "learning rate, or look at train/nonfinite_updates and the loss curves in "
                "TensorBoard; the last saved checkpoint has finite weights",
            )

    def record(self, logger: Any) -> None:
        """Record the means since the last call (``train/...``) and start a new window."""
        if self.total is None or not self.count:
            return
        for name, value in zip(self.names, self.total.tolist(), strict=True):
            if name == "skipped":
                logger.record("train/nonfinite_updates", round(value))
            else:
                logger.record(_train_tag(name), value / self.count)
        self.total, self.count = None, 0


def _train_tag(key: str) -> str:
    if key.startswith("loss/"):
        return f"train/{key[5:]}_loss"
    return "train/" + key.replace("/", "_")
