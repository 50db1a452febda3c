"""Replay buffers for Stable-Baselines3 that keep flagged transitions out of training data.

Example:
    >>> import gymnasium as gym
    >>> buf = InvariantFilteredReplayBuffer(100, gym.spaces.Box(-1, 1, (2,)),
    ...                                     gym.spaces.Box(-1, 1, (1,)), device="cpu", n_envs=2)
    >>> obs, act = np.zeros((2, 2), np.float32), np.zeros((2, 1), np.float32)
    >>> infos = [{"physlink": {"valid": True}}, {"physlink": {"valid": False}}]
    >>> buf.add(obs, obs, act, np.zeros(2), np.zeros(2), infos)
    >>> buf.size(), buf.n_added, buf.n_dropped
    (1, 1, 1)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from physlink_gym._records import find_record, valid_mask
from physlink_gym.errors import ConfigurationError, ValidationError

__all__ = ["InvariantFilteredReplayBuffer"]


class InvariantFilteredReplayBuffer(ReplayBuffer):
    """An SB3 :class:`ReplayBuffer` that never stores transitions flagged by InvariantWrapper.

    Use it as ``SAC(..., replay_buffer_class=InvariantFilteredReplayBuffer)`` (TD3/DDPG/DQN too)
    with envs wrapped in :class:`~physlink_gym.InvariantWrapper`: a transition whose
    ``info[info_key]["valid"]`` is False is counted in ``n_dropped`` and never written.

    With several envs, each valid transition is stored as its own row (the parent buffer runs
    with ``n_envs=1`` and the same total capacity ``buffer_size``), so dropping one env's
    transition never leaves a hole. ``optimize_memory_usage`` is refused: it stores ``next_obs``
    as the next row's ``obs``, which dropping a transition would corrupt.

    Args:
        buffer_size: Total number of transitions kept (all envs together).
        observation_space: Observation space.
        action_space: Action space.
        device: PyTorch device.
        n_envs: Number of parallel envs feeding ``add``.
        optimize_memory_usage: Must be False.
        handle_timeout_termination: As in SB3.
        info_key: The wrapper's ``info_key``; None (default) finds the record whatever key
            the wrapper was given.
    """

    def __init__(
        self, buffer_size: int, observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any], device: th.device | str = "auto", n_envs: int = 1,
        optimize_memory_usage: bool = False, handle_timeout_termination: bool = True,
        info_key: str | None = None,
    ) -> None:
        if optimize_memory_usage:
            raise ConfigurationError(
                got="optimize_memory_usage=True",
                expected="optimize_memory_usage=False with InvariantFilteredReplayBuffer",
                fix="drop optimize_memory_usage (dropped transitions would corrupt next_obs)")
        super().__init__(buffer_size, observation_space, action_space, device, n_envs=1,
                         optimize_memory_usage=False,
                         handle_timeout_termination=handle_timeout_termination)
        self.source_envs = int(n_envs)
        self.info_key = info_key
        self.n_added = 0
        self.n_dropped = 0

    def add(self, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
            done: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """Store the valid transitions of one vector step; count the flagged ones."""
        mask = valid_mask(infos, info_key=self.info_key, missing=False)
        if len(mask) and not any(find_record(info, self.info_key) is not None for info in infos):
            raise ConfigurationError(
                got=f"step infos without the wrapper's record (info_key={self.info_key!r})",
                expected="envs wrapped in physlink_gym.InvariantWrapper",
                fix="wrap each env: make_vec_env(..., wrapper_class=InvariantWrapper, "
                "wrapper_kwargs={'invariants': [...]})")
        n = len(infos)
        if n == 1 and mask[0]:
            super().add(obs, next_obs, action, reward, done, infos)
        else:
            action = np.asarray(action).reshape((n, -1))
            for i in np.flatnonzero(mask).tolist():
                sl = slice(i, i + 1)
                super().add(obs[sl], next_obs[sl], action[sl], np.asarray(reward)[sl],
                            np.asarray(done)[sl], [infos[i]])
        kept = int(mask.sum())
        self.n_added += kept
        self.n_dropped += n - kept

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """Sample like SB3; a clear error when every transition so far was flagged."""
        if self.size() == 0:
            raise ValidationError(
                got=f"an empty buffer after {self.n_dropped} flagged transitions",
                expected="at least one valid transition before training starts",
                fix="check compliance_report(): a hard invariant flags everything; raise "
                "learning_starts, loosen the tolerance or make it soft")
        return super().sample(batch_size, env=env)
