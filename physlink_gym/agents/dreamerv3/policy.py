"""DreamerV3Policy: the SB3 policy object that owns the learner and carries recurrent state.

``predict`` follows the recurrent-policy convention of SB3 (sb3-contrib's RecurrentPPO): the
state is a tuple of numpy arrays ``(h, z, previous_action)`` with a leading batch dimension, and
``episode_start[i] = True`` resets row ``i`` exactly as ``state=None`` would.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.utils import is_vectorized_observation

from physlink_gym.agents.dreamerv3.config import DreamerV3Config
from physlink_gym.agents.dreamerv3.learner import DreamerV3Learner
from physlink_gym.errors import ConfigurationError, ValidationError
from physlink_gym.spaces import (
    box_to_unit,
    discrete_to_one_hot,
    one_hot_to_discrete,
    unit_to_box,
)

__all__ = ["DreamerV3Policy", "RecurrentState"]

RecurrentState = tuple[np.ndarray, ...]

_GYM_API_MIX = (
    "You have passed a tuple to the predict() function instead of a Numpy array or a Dict. "
    "You are probably mixing Gym API with SB3 VecEnv API: `obs, info = env.reset()` (Gym) "
    "vs `obs = vec_env.reset()` (SB3 VecEnv)."
)


def action_groups(action_space: spaces.Space[Any]) -> tuple[int, ...] | None:
    """The choices of each discrete action group, or None for a continuous Box.

    ``Discrete(n)``: ``(n,)``; ``MultiDiscrete(nvec)`` (1-D): ``tuple(nvec)``;
    ``MultiBinary(n)`` (1-D): ``n`` groups of 2. Anything else is a ConfigurationError that
    says how to make the space fit.
    """
    if isinstance(action_space, spaces.Discrete):
        return (int(action_space.n),)
    if isinstance(action_space, spaces.MultiDiscrete) and len(action_space.nvec.shape) == 1:
        return tuple(int(n) for n in action_space.nvec.tolist())
    if isinstance(action_space, spaces.MultiBinary) and np.ndim(action_space.n) == 0:
        return (2,) * int(np.asarray(action_space.n))
    if isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        if not np.all(np.isfinite(action_space.low)) or not np.all(np.isfinite(action_space.high)):
            raise ConfigurationError(
                got=f"action space {action_space} with infinite bounds",
                expected="a Box with finite low and high (actions are rescaled from [-1, 1])",
                fix="bound it: gymnasium.wrappers.RescaleAction(env, -1.0, 1.0) on an env whose "
                "actions have a natural range, or ClipAction after setting finite low/high "
                "on the env's action_space",
            )
        return None
    raise ConfigurationError(
        got=f"action space {action_space}",
        expected="a 1-D Box with finite bounds, Discrete, a 1-D MultiDiscrete or a 1-D "
        "MultiBinary",
        fix="flatten the action space (gymnasium.wrappers.FlattenObservation-style) first",
    )


def action_dim_of(action_space: spaces.Space[Any]) -> tuple[int, bool]:
    """Return ``(learner action width, is_discrete)`` for a supported action space.

    Discrete groups are laid out ``[G, max(groups)]`` (see
    :class:`~physlink_gym.agents.dreamerv3.networks.Actor`).
    """
    groups = action_groups(action_space)
    if groups is None:
        return get_action_dim(action_space), False
    return len(groups) * max(groups), True


def obs_keys_of(observation_space: spaces.Space[Any],
                mlp_keys: str = ".*") -> tuple[str, ...] | None:
    """The keys of a Dict observation space the model reads, in the space's order.

    The keys that ``mlp_keys`` matches (``re.match``, as the reference's encoder selects them)
    must hold a Box of numbers of at most one dimension (a vector or a scalar): the encoder
    reads them concatenated, in the order of ``observation_space.spaces`` (the order
    ``gymnasium.spaces.flatten`` and ``FlattenObservation`` use); other keys are ignored.
    ``None`` for a Box space.
    """
    if not isinstance(observation_space, spaces.Dict):
        return None
    keys = []
    for key, sub in observation_space.spaces.items():
        if not re.match(mlp_keys, str(key)):
            continue
        if not (isinstance(sub, spaces.Box) and len(sub.shape) <= 1):
            raise ConfigurationError(
                got=f"observation key {key!r}: {sub}, selected by mlp_keys={mlp_keys!r}",
                expected="selected Dict keys that hold vectors or scalars (Box spaces of at "
                "most one dimension); images (CnnPolicy) are not supported yet",
                fix="leave the key out: policy_kwargs={'mlp_keys': '^(state|goal)$'} (the "
                "keys to read) or gymnasium.wrappers.FilterObservation",
            )
        keys.append(str(key))
    if not keys:
        raise ConfigurationError(
            got=f"observation space {observation_space} with mlp_keys={mlp_keys!r}",
            expected="at least one vector key that mlp_keys matches",
            fix="pass policy_kwargs={'mlp_keys': ...} matching the vector keys")
    return tuple(keys)


def _size(space: spaces.Space[Any]) -> int:
    """Numbers in one observation of a Box (1 for a scalar)."""
    return int(np.prod(space.shape or (), dtype=np.int64))


def obs_dim_of(observation_space: spaces.Space[Any], mlp_keys: str = ".*") -> int:
    """Return the width of a flat vector observation (a Dict's keys side by side)."""
    if isinstance(observation_space, spaces.Dict):
        keys = obs_keys_of(observation_space, mlp_keys)
        assert keys is not None
        return sum(_size(observation_space.spaces[k]) for k in keys)
    if isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 1:
        return int(observation_space.shape[0])
    raise ConfigurationError(
        got=f"observation space {observation_space}",
        expected="a 1-D gymnasium.spaces.Box (MlpPolicy) or a Dict of vectors "
        "(MultiInputPolicy)",
        fix="flatten observations with gymnasium.wrappers.FlattenObservation",
    )


class DreamerV3Policy(BasePolicy):
    """Policy wrapper around :class:`DreamerV3Learner` with SB3's ``predict`` contract.

    Args:
        observation_space: A 1-D Box.
        action_space: A 1-D Box with finite bounds, or Discrete.
        lr_schedule: SB3 learning-rate schedule (the learner's LaProp uses its value).
        config: The DreamerV3 configuration.
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        lr_schedule: Any,
        config: DreamerV3Config,
    ) -> None:
        super().__init__(observation_space, action_space)
        self.config = config
        self.obs_dim = obs_dim_of(observation_space, config.mlp_keys)
        self.obs_keys = obs_keys_of(observation_space, config.mlp_keys)
        self.act_dim, self.discrete = action_dim_of(action_space)
        self.groups = action_groups(action_space)
        self.learner = DreamerV3Learner(config, self.obs_dim, self.act_dim, self.discrete,
                                        groups=self.groups)
        self.optimizer = self.learner.optimizer
        self.nonfinite_obs = 0  # observations that were not finite (see act)

    def flat_obs(self, obs: Any) -> np.ndarray:
        """Observations as float32 rows ``[N, obs_dim]``; a Dict's keys side by side.

        An array passes through (reshaped); a dict of ``[N, ...]`` arrays (a VecEnv's) or of
        single observations is read in :attr:`obs_keys` order.
        """
        if self.obs_keys is None or not isinstance(obs, dict):
            return np.asarray(obs, dtype=np.float32).reshape(-1, self.obs_dim)
        missing = [k for k in self.obs_keys if k not in obs]
        if missing:
            raise ValidationError(
                got=f"an observation dict without {missing} (keys {sorted(obs)})",
                expected=f"the keys {list(self.obs_keys)}",
                fix="pass the observation returned by env.reset()/step()",
            )
        space = self.observation_space
        assert isinstance(space, spaces.Dict)
        parts = [np.asarray(obs[k], dtype=np.float32) for k in self.obs_keys]
        sizes = [_size(space.spaces[k]) for k in self.obs_keys]
        n = parts[0].size // max(sizes[0], 1)
        return np.concatenate([p.reshape(n, size) for p, size in zip(parts, sizes, strict=True)],
                              axis=1)

    # -- conversions between the learner's action space and the env's --------------------------
    @property
    def env_action_width(self) -> int:
        """Width of an env action as a float vector (a Discrete one: its index)."""
        if isinstance(self.action_space, spaces.Discrete):
            return 1
        if self.groups is not None:  # MultiDiscrete / MultiBinary: one index per group
            return len(self.groups)
        return self.act_dim

    def to_env_action(self, action: np.ndarray) -> np.ndarray:
        """Map learner actions ([-1, 1] or one-hot) to env actions (rescaled Box, or indices)."""
        space = self.action_space
        if isinstance(space, spaces.Discrete):
            return one_hot_to_discrete(action, int(space.start))
        if isinstance(space, (spaces.MultiDiscrete, spaces.MultiBinary)):
            assert self.groups is not None
            one_hot = np.asarray(action).reshape(len(action), len(self.groups), -1)
            index = np.argmax(one_hot, axis=-1)  # [N, G]
            if isinstance(space, spaces.MultiDiscrete):
                index = index + space.start
            return np.asarray(index, dtype=space.dtype)
        assert isinstance(space, spaces.Box)
        return unit_to_box(action, space.low, space.high, dtype=space.dtype)

    def to_learner_action(self, action: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_env_action`: env actions ``[N, ...]`` to ``[N, A]`` (float32).

        Box actions go to ``[-1, 1]`` (a dimension with ``low == high`` maps to 0), Discrete
        indices (``start`` included) to one-hot rows.
        """
        space = self.action_space
        if isinstance(space, spaces.Discrete):
            return discrete_to_one_hot(action, int(space.n), int(space.start))
        if isinstance(space, (spaces.MultiDiscrete, spaces.MultiBinary)):
            assert self.groups is not None
            groups = np.asarray(self.groups)
            start = space.start if isinstance(space, spaces.MultiDiscrete) else 0
            shifted = np.rint(np.asarray(action, np.float64).reshape(len(action), -1)) - start
            index = np.clip(shifted, 0, groups - 1).astype(np.int64)  # [N, G]
            one_hot = np.zeros((len(index), len(groups), int(groups.max())), np.float32)
            np.put_along_axis(one_hot, index[..., None], 1.0, axis=-1)
            return one_hot.reshape(len(index), -1)
        assert isinstance(space, spaces.Box)
        return box_to_unit(np.asarray(action).reshape(len(action), -1), space.low, space.high)

    def initial_state(self, n: int) -> tuple[torch.Tensor, ...]:
        """Zero recurrent state for ``n`` rows, on the learner's device."""
        return tuple(self.learner.initial_state(n))

    def act(
        self, obs: np.ndarray, state: tuple[torch.Tensor, ...], is_first: np.ndarray,
        deterministic: bool,
    ) -> tuple[np.ndarray, tuple[torch.Tensor, ...]]:
        """One batched policy step on raw observations; returns learner-space actions.

        A row whose observation is not finite (a NaN or inf from the env) never reaches the
        networks: it is read as a stream cut, the row's recurrent state restarts
        (``is_first``) and the policy acts on a zero observation. Such rows are counted in
        :attr:`nonfinite_obs` (TensorBoard: ``rollout/nonfinite_obs``); the replay stores those
        entries as invalid, so they are never trained on either.
        """
        obs = np.asarray(obs, dtype=np.float32)
        is_first = np.asarray(is_first, dtype=bool)
        bad = ~np.isfinite(obs).reshape(len(obs), -1).all(axis=1)
        if bad.any():
            obs = np.where(bad.reshape(-1, *([1] * (obs.ndim - 1))), np.float32(0.0), obs)
            is_first = is_first | bad
            self.nonfinite_obs += int(bad.sum())
        obs_t = torch.as_tensor(obs, device=self.device)
        first_t = torch.as_tensor(is_first, device=self.device)
        if self.learner.training:  # setting the mode walks every module: only when it changes
            self.learner.eval()
        action, new_state = self.learner.policy_step(obs_t, state, first_t, deterministic)  # type: ignore[arg-type]
        return action.cpu().numpy(), tuple(new_state)

    # -- SB3 API --------------------------------------------------------------------------------
    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Not used: DreamerV3 acts through :meth:`predict`, which needs the recurrent state."""
        raise NotImplementedError("DreamerV3Policy acts through predict(); use model.predict")

    def _predict(self, observation: Any, deterministic: bool = False) -> torch.Tensor:
        raise NotImplementedError("DreamerV3Policy acts through predict(); use model.predict")

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: RecurrentState | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, RecurrentState]:
        """Return ``(action, next_state)``; see the module docstring for the state contract."""
        if isinstance(observation, tuple) and len(observation) == 2 and isinstance(
            observation[1], dict
        ):
            raise ValueError(_GYM_API_MIX)
        try:
            obs = (self.flat_obs(observation) if self.obs_keys is not None
                   else np.asarray(observation, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ValidationError):
                raise
            raise ValidationError(
                got=f"observation {observation!r:.80} ({type(observation).__name__}: {exc})",
                expected=f"numbers of shape {self.observation_space.shape} or (n_envs, "
                f"*{self.observation_space.shape})",
                fix="pass the observation returned by env.reset()/step()",
            ) from None
        try:
            vectorized = is_vectorized_observation(
                {k: np.asarray(v) for k, v in observation.items()}  # type: ignore[arg-type]
                if isinstance(observation, dict) else obs, self.observation_space)
        except (ValueError, AttributeError) as exc:
            raise ValidationError(
                got=f"an observation of shape {obs.shape}",
                expected=f"shape {self.observation_space.shape} or (n_envs, "
                f"*{self.observation_space.shape})",
                fix="pass the observation returned by env.reset()/step()",
            ) from exc
        batch = obs.reshape((-1, self.obs_dim))
        n = len(batch)
        if state is None:
            torch_state = self.initial_state(n)
            starts = np.ones(n, dtype=bool)
        else:
            torch_state = self._state_from_numpy(state, n)
            starts = np.zeros(n, dtype=bool)
            if episode_start is not None:
                flags = np.asarray(episode_start, dtype=bool)
                if flags.size != n:
                    raise ValidationError(
                        got=f"episode_start of {flags.size} flag(s) for {n} observation(s)",
                        expected=f"one flag per observation ({n})",
                        fix="pass the dones of the same vector step as the observations",
                    )
                starts = flags.reshape(n)
        action, new_state = self.act(batch, torch_state, starts, deterministic)
        env_action = self.to_env_action(action)
        if not vectorized:
            env_action = env_action[0]
        return env_action, tuple(t.cpu().numpy() for t in new_state)

    def _state_from_numpy(self, state: RecurrentState, n: int) -> tuple[torch.Tensor, ...]:
        reference = self.initial_state(n)
        if len(state) != len(reference):
            raise ValidationError(
                got=f"a state tuple of length {len(state)}",
                expected=f"the tuple (h, z, previous_action) of length {len(reference)} "
                "returned by predict()",
                fix="pass the state returned by the previous predict() call, or None",
            )
        tensors = []
        for value, ref in zip(state, reference, strict=True):
            arr = np.asarray(value, dtype=np.float32)
            if arr.shape != tuple(ref.shape):
                raise ValidationError(
                    got=f"a state array of shape {arr.shape}",
                    expected=f"shape {tuple(ref.shape)} for {n} observation(s)",
                    fix="keep the state and the observation batch the same size",
                )
            tensors.append(torch.as_tensor(arr, device=self.device))
        return tuple(tensors)
