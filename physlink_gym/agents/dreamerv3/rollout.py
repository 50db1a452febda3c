"""From VecEnv steps to replay entries, and invariant statistics for TensorBoard.

Replay entries follow Dreamer's convention: entry ``t`` holds ``obs_t``, the action that led into
it, the reward received on arriving, ``is_first``, ``is_terminal`` (a true terminal state:
truncation is not termination) and ``valid``. At an episode end the true final observation
(``info["terminal_observation"]``) is stored, then the reset observation with ``is_first``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from physlink_gym.agents.dreamerv3.replay import SequenceReplay

__all__ = ["EntryWriter", "InvariantStats", "transition_valid"]


def transition_valid(info: dict[str, Any]) -> bool:
    """Whether :class:`~physlink_gym.InvariantWrapper` left the transition unflagged.

    Non-finite observations, actions and rewards need no check here: the replay stores those
    entries as invalid itself (vectorised, in ``SequenceReplay.add``), wrapped env or not.
    """
    record = info.get("physlink")
    return not (isinstance(record, dict) and not record.get("valid", True))


class EntryWriter:
    """Writes VecEnv transitions into a :class:`SequenceReplay` in the entry format.

    Args:
        replay: The destination replay (one stream per env).
        vec_normalize: The VecNormalize wrapper, if any: raw observations and rewards are stored.
    """

    def __init__(self, replay: SequenceReplay, vec_normalize: Any = None) -> None:
        self.replay = replay
        self.vec_normalize = vec_normalize
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
        infos: list[dict[str, Any]], new_obs: np.ndarray,
    ) -> None:
        """Store one vector step; episodes that ended also get their reset entry."""
        n = self.replay.n_envs
        vn = self.vec_normalize
        raw_new = np.asarray(vn.get_original_obs() if vn is not None else new_obs, np.float32)
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
                final = np.asarray(final, dtype=np.float32)
                if vn is not None:
                    final = np.asarray(vn.unnormalize_obs(final), dtype=np.float32)
                next_obs[i] = final.reshape(-1)
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


class InvariantStats:
    """Counts invariant outcomes between two log dumps (``invariants/`` TensorBoard tags)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new logging window."""
        self.steps = 0
        self.flagged = 0
        self.cost = 0.0
        self.violations: dict[str, int] = defaultdict(int)
        self.seen = False

    def update(self, infos: list[dict[str, Any]]) -> None:
        """Add one vector step's infos."""
        for info in infos:
            record = info.get("physlink")
            if not isinstance(record, dict):
                continue
            self.seen = True
            self.steps += 1
            self.flagged += int(not record.get("valid", True))
            self.cost += float(record.get("cost", 0.0))
            violated = record.get("violated", ())
            if isinstance(violated, dict):
                violated = [k for k, v in violated.items() if v]
            names = violated
            for name in names:
                self.violations[str(name)] += 1
            for name in record.get("residuals", {}):
                self.violations.setdefault(str(name), 0)

    def record(self, logger: Any) -> None:
        """Record rates on an SB3 logger and start a new window (no-op when not wrapped)."""
        if not self.seen or self.steps == 0:
            return
        logger.record("invariants/flagged_rate", self.flagged / self.steps)
        logger.record("invariants/cost_per_step", self.cost / self.steps)
        for name, count in sorted(self.violations.items()):
            logger.record(f"invariants/violation_rate/{name}", count / self.steps)
        self.reset()
