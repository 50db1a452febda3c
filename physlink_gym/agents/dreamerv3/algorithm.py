"""DreamerV3 as a Stable-Baselines3 algorithm: the env loop, replay, logging and checkpoints.

One training step, top to bottom (:meth:`DreamerV3.learn`):

1. act with the recurrent policy on the raw observation (``policy.act``),
2. step the VecEnv, count ``num_timesteps``,
3. store the entries in the sequence replay (raw observations when VecNormalize is used; a
   transition flagged by :class:`~physlink_gym.InvariantWrapper` is stored as invalid),
4. owe ``train_ratio / (batch_size * sequence_length)`` updates per env step and pay them with
   ``learner.train_step`` on ``(batch_size, sequence_length)`` replay windows,
5. call the SB3 callbacks (``update_locals``, ``on_step``).

Deviation from SB3's off-policy loop, on purpose: the callbacks run *after* the step is stored
and trained on, so a model saved by a callback (``CheckpointCallback``) is a consistent "after
step ``num_timesteps``" state and resuming from it is exact (see :mod:`.persistence`). A callback
returning False stops training after that step.

This subclasses SB3's ``BaseAlgorithm`` rather than ``OffPolicyAlgorithm``: the latter's buffers and
action sampling are per-transition and would drop the recurrent state.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm, maybe_make_env
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import safe_mean

from physlink_gym.agents.dreamerv3 import distributed, offline, persistence
from physlink_gym.agents.dreamerv3.compile import auto_compile
from physlink_gym.agents.dreamerv3.config import (
    DreamerV3Config,
    make_config,
    overrides_from_args,
)
from physlink_gym.agents.dreamerv3.policy import (
    DreamerV3Policy,
    RecurrentState,
    action_groups,
)
from physlink_gym.agents.dreamerv3.replay import SequenceReplay
from physlink_gym.agents.dreamerv3.rollout import EntryWriter, UpdateMetrics
from physlink_gym.callbacks import InvariantStats, ProgressBar, add_invariant_layout
from physlink_gym.errors import ConfigurationError, TrainingError, check_int

if TYPE_CHECKING:
    from physlink_gym.data.trajectories import Trajectories

__all__ = ["DreamerV3"]

SelfDreamerV3 = TypeVar("SelfDreamerV3", bound="DreamerV3")


class DreamerV3(BaseAlgorithm):
    """DreamerV3 (Hafner et al., Nature 2025) with the Stable-Baselines3 interface.

    Args:
        policy: ``"MlpPolicy"`` (vector observations) or the policy class.
        env: A Gymnasium env, an env id, or a VecEnv (``n_envs >= 1``).
        preset: Model size: ``"debug"``, ``"1m"`` (default), ``"12m"``, ``"25m"``, ``"50m"``,
            ``"200m"`` (see :func:`~physlink_gym.agents.dreamerv3.config.make_config`).
        learning_rate: LaProp learning rate, a float or an SB3 schedule (a callable of the
            remaining progress, 1 → 0, as in SB3); ``None`` keeps the preset's (4e-5,
            reference). The warm-up ramp of the config applies on top of either. A checkpoint
            stores a schedule's value at save time (JSON holds no code).
        train_ratio: Replayed steps per env step; ``None`` keeps the preset's.
        batch_size: Sequences per update; ``None`` keeps the preset's (16).
        sequence_length: Steps per sequence; ``None`` keeps the preset's (64).
        learning_starts: Env steps collected before the first update.
        buffer_size: Replay capacity in steps, across all envs.
        policy_kwargs: Further config overrides, e.g. ``{"deter": 256, "imag_horizon": 10}``.
        tensorboard_log: Folder for TensorBoard runs (``DreamerV3_1``, ``DreamerV3_2``, ...).
        verbose: 0 silent, 1 training info, 2 debug.
        seed: Seed for torch, numpy, Python and the env.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        stats_window_size: Episodes averaged in ``rollout/`` statistics.
        monitor_wrapper: Wrap a raw env in ``Monitor``.

    Example:
        >>> import gymnasium as gym
        >>> from physlink_gym import DreamerV3
        >>> model = DreamerV3("MlpPolicy", "Pendulum-v1", preset="debug", learning_starts=48,
        ...                   batch_size=4, sequence_length=16, train_ratio=64, seed=0)
        >>> _ = model.learn(64)  # 16 updates of 4 x 16 steps
        >>> action, state = model.predict(model.env.reset(), deterministic=True)
        >>> action.shape, len(state)
        ((1, 1), 3)
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": DreamerV3Policy,  # vector observations
        "MultiInputPolicy": DreamerV3Policy,  # a Dict of vectors: the keys side by side
    }
    policy: DreamerV3Policy

    def __init__(
        self,
        policy: str | type[DreamerV3Policy],
        env: GymEnv | str | None,
        *,
        preset: str = "1m",
        learning_rate: float | Schedule | None = None,
        train_ratio: float | None = None,
        batch_size: int | None = None,
        sequence_length: int | None = None,
        learning_starts: int = 1024,
        buffer_size: int = 1_000_000,
        policy_kwargs: dict[str, Any] | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        stats_window_size: int = 100,
        monitor_wrapper: bool = True,
        _init_setup_model: bool = True,
    ) -> None:
        self.preset = preset
        schedule = learning_rate if callable(learning_rate) else None
        self.config_overrides = overrides_from_args(
            policy_kwargs,  # a schedule: the config records (and checks) its start value
            learning_rate=_schedule_start(schedule) if schedule else learning_rate,
            train_ratio=train_ratio, batch_size=batch_size, sequence_length=sequence_length,
        )
        config = make_config(preset, **self.config_overrides)  # validates early
        # Under torchrun: join the process group; each rank its own seed, rank 0 alone logs.
        device = distributed.setup(device)
        self.rank, seed, tensorboard_log, verbose = distributed.per_rank(
            seed, tensorboard_log, verbose)
        if env is not None:  # our clear errors before SB3's bare assertions on the spaces
            env = maybe_make_env(env, verbose)
            action_groups(env.action_space)
        super().__init__(
            policy, env, learning_rate=schedule or config.lr, policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size, tensorboard_log=tensorboard_log,
            verbose=verbose, device=device, support_multi_env=True,
            monitor_wrapper=monitor_wrapper, seed=seed,
            supported_action_spaces=(spaces.Box, spaces.Discrete, spaces.MultiDiscrete,
                                     spaces.MultiBinary),
        )
        self.learning_starts = check_int("learning_starts", learning_starts, minimum=0)
        _set_log_level(verbose)
        self.buffer_size = check_int("buffer_size", buffer_size, minimum=1)
        self.replay_buffer: SequenceReplay | None = None
        self._policy_state: tuple[torch.Tensor, ...] | None = None
        self._update_credit = 0.0
        self._entries: EntryWriter | None = None
        self.invariant_stats = InvariantStats()
        self._update_metrics = UpdateMetrics()
        self._warned_no_update = False
        if _init_setup_model:
            self._setup_model()

    # -- construction ---------------------------------------------------------------------------
    @property
    def config(self) -> DreamerV3Config:
        """The resolved configuration (preset + overrides)."""
        return self.policy.config

    def _setup_model(self) -> None:
        """Build policy, learner and replay from attributes (SB3's ``load`` relies on this)."""
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        config = make_config(self.preset, **self.config_overrides)
        policy_class = self.policy_class
        if not (isinstance(policy_class, type) and issubclass(policy_class, DreamerV3Policy)):
            raise ConfigurationError(
                got=f"policy={policy_class!r}",
                expected="'MlpPolicy' or a subclass of DreamerV3Policy",
                fix="pass 'MlpPolicy', or subclass physlink_gym.agents.dreamerv3.policy."
                "DreamerV3Policy",
            )
        self.policy = policy_class(
            self.observation_space, self.action_space, self.lr_schedule, config
        ).to(self.device)
        distributed.broadcast_module(self.policy)  # every rank starts from rank 0's weights
        n_envs = int(getattr(self, "n_envs", 1) or 1)  # the env's, saved, or from_spaces'
        self.replay_buffer = SequenceReplay(
            capacity=max(self.buffer_size, n_envs * (config.batch_length + 1)),
            n_envs=n_envs, obs_dim=self.policy.obs_dim, action_dim=self.policy.act_dim,
            seed=self.seed,
        )
        self._policy_state = None
        self._entries = None

    @classmethod
    def from_spaces(
        cls: type[SelfDreamerV3],
        observation_space: Any,
        action_space: Any,
        *,
        n_envs: int = 1,
        policy: str | type[DreamerV3Policy] = "MlpPolicy",
        **kwargs: Any,
    ) -> SelfDreamerV3:
        """Build the agent from spaces alone, without an env (e.g. to :meth:`fit` logged data).

        Args:
            observation_space: A 1-D ``gymnasium.spaces.Box`` or an
                :class:`~physlink_gym.spaces.ObservationSpace`.
            action_space: A 1-D ``Box`` with finite bounds, a ``Discrete``, or an
                :class:`~physlink_gym.spaces.ActionSpace`.
            n_envs: Envs of the VecEnv that :meth:`set_env` will give later (SB3 keeps it fixed).
            policy: ``"MlpPolicy"`` or a :class:`DreamerV3Policy` subclass.
            **kwargs: Any other argument of :class:`DreamerV3` (``preset``, ``seed``, ...).

        ``fit()`` trains it on trajectories; ``set_env(env)`` (an env with these spaces) then
        ``learn()`` continue online; ``save``/``load`` work without an env.

        Example:
            >>> from physlink_gym import ActionSpace, ObservationSpace
            >>> model = DreamerV3.from_spaces(
            ...     ObservationSpace(low=(-1.0, -1.0, -8.0), high=(1.0, 1.0, 8.0)),
            ...     ActionSpace.continuous(1, [(-2.0, 2.0)]), preset="debug")
            >>> model.env is None, model.action_space.shape
            (True, (1,))
        """
        if "env" in kwargs:
            raise ConfigurationError(got="from_spaces(..., env=...)",
                                     expected="spaces only (the env comes later)",
                                     fix="call model.set_env(env) after from_spaces")
        model = cls(policy, None, _init_setup_model=False, **kwargs)
        model.observation_space = _gym_space(observation_space, "observation_space")
        model.action_space = _gym_space(action_space, "action_space")
        model.n_envs = check_int("n_envs", n_envs, minimum=1)
        model._setup_model()
        return model

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        """Set a new env (same spaces and ``n_envs``, SB3's rule); the replay stream restarts."""
        for name in ("observation_space", "action_space"):
            ours, theirs = getattr(self, name), getattr(env, name, None)
            if theirs != ours:
                raise ConfigurationError(
                    got=f"set_env with {name} {theirs}",
                    expected=f"the model's {name} {ours}",
                    fix="pass an env with the spaces the model was built for (or build a new "
                    "model for this env)",
                )
        n = getattr(env, "num_envs", 1)
        if n != self.n_envs:
            raise ConfigurationError(
                got=f"set_env with {n} env(s)", expected=f"{self.n_envs}, as the model was built",
                fix=f"pass a VecEnv of {self.n_envs} env(s); to go on with {n} envs, save the "
                f"model and DreamerV3.load(path, env=...) with the new env (SB3's rule), or "
                f"build it with from_spaces(..., n_envs={n})",
            )
        super().set_env(env, force_reset=force_reset)
        self._policy_state = None
        self._entries = None

    # -- acting ---------------------------------------------------------------------------------
    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: RecurrentState | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, RecurrentState]:
        """Action for ``observation`` and the next recurrent state ``(h, z, prev_action)``.

        ``episode_start[i] = True`` resets row ``i`` exactly like ``state=None``.

        Observations are what the model's env returns, as everywhere in SB3: the world model
        learns on raw observations, so when the model's env is a ``VecNormalize`` the
        observation is first un-normalised with its statistics. This is what makes
        ``EvalCallback`` and ``evaluate_policy`` right with a ``VecNormalize`` eval env (whose
        statistics ``EvalCallback`` syncs from the training env). A model without a
        ``VecNormalize`` env (e.g. loaded without an env) takes raw observations.
        """
        vec_normalize = self._vec_normalize_env
        if vec_normalize is not None and vec_normalize.norm_obs and not isinstance(
            observation, tuple
        ):
            observation = vec_normalize.unnormalize_obs(
                observation if isinstance(observation, dict)
                else np.asarray(observation, np.float32))
        return self.policy.predict(observation, state, episode_start, deterministic)

    # -- training loop --------------------------------------------------------------------------
    def learn(
        self: SelfDreamerV3,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "DreamerV3",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfDreamerV3:
        """Collect experience and train, following SB3's ``learn`` protocol.

        Args:
            total_timesteps: Env steps to collect (counted over all envs).
            callback: Any SB3 callback, a list of them, or a plain function.
            log_interval: Dump logs every this many finished episodes.
            tb_log_name: Name of the TensorBoard run folder.
            reset_num_timesteps: Restart the step counter (and the TensorBoard run).
            progress_bar: Show a progress bar with the learner's updates per second.

        Returns:
            The trained model (``self``).

        The statistics gathered since the last log dump are written when ``learn`` returns,
        so a short run still leaves its ``train/`` scalars in TensorBoard.
        """
        check_int("total_timesteps", total_timesteps, minimum=0)
        if self.env is None:
            raise ConfigurationError(
                got="learn() on a model without an env (built by from_spaces or loaded "
                "without one)",
                expected="an env to collect experience from",
                fix="call model.set_env(env) first; fit(trajectories) trains without an env",
            )
        env_resets = reset_num_timesteps or self._last_obs is None  # _setup_learn resets then
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, False
        )
        if progress_bar and not distributed.rank():  # one bar in a data-parallel run
            callback = CallbackList([callback, ProgressBar()])
            callback.init_callback(self)
        if env_resets:  # the env was reset: the replay stream and recurrent state start anew
            self._policy_state = None
            self._entries = None
        add_invariant_layout(self.logger)
        self._bind_physics()
        self._warn_if_no_update(total_timesteps)
        # The updates this call owes: its env steps after learning_starts, at train_ratio.
        steps = max(total_timesteps - max(self.num_timesteps, self.learning_starts), 0)
        self._plan_compile(int(steps * self._updates_per_env_step()))
        callback.on_training_start(locals(), globals())
        assert self.env is not None
        while self.num_timesteps < total_timesteps:
            if not self._collect_step(callback, log_interval, total_timesteps):
                break
        if self._update_metrics.count or self.invariant_stats.steps:
            self.dump_logs()  # flush the last window
        callback.on_training_end()
        return self

    def _plan_compile(self, updates: int) -> None:
        """With ``compile="auto"``, compile the update when ``updates`` make it pay off.

        :func:`~physlink_gym.agents.dreamerv3.compile.auto_compile` decides (a CPU with a C++
        compiler and at least ``AUTO_COMPILE_UPDATES`` updates); ``compile=True`` or ``False``
        are kept as they are. Called by :meth:`learn` and :meth:`fit` with the updates they
        plan.
        """
        if self.config.compile != "auto":
            return
        learner = self.policy.learner
        on = auto_compile(updates, learner.device)
        if on != learner.compiled:
            _LOG.info("compile='auto': %s for %d planned updates", "compiling" if on
                      else "eager", updates)
        learner.set_compiled(on)

    def _warn_if_no_update(self, total_timesteps: int) -> None:
        if total_timesteps <= self.learning_starts and not self._warned_no_update:
            self._warned_no_update = True
            warnings.warn(
                f"learn({total_timesteps}) ends at or before learning_starts="
                f"{self.learning_starts}: no update will run, so the policy will not change. "
                "Train for more steps or lower learning_starts.",
                UserWarning, stacklevel=3,
            )

    def _ensure_stream(self) -> None:
        """Open the replay stream: anew (first entry, zero state) or continuing a resumed one."""
        assert self.env is not None and self.replay_buffer is not None
        if self._entries is not None and self._entries.replay is not self.replay_buffer:
            self._entries = None  # the replay buffer was replaced (load_replay_buffer)
        if self._entries is None:
            self._entries = EntryWriter(self.replay_buffer, self._vec_normalize_env,
                                        flatten=self.policy.flat_obs)
            if self._policy_state is not None:  # restored by load(): the stream continues
                return
        if self._policy_state is None:
            self._policy_state = self.policy.initial_state(self.n_envs)
            assert self._last_episode_starts is not None
            self._last_episode_starts[:] = True
            self._entries.start(self._raw_last_obs())

    def _raw_last_obs(self) -> np.ndarray:
        if self._vec_normalize_env is not None and self._last_original_obs is not None:
            return self.policy.flat_obs(self._last_original_obs)
        return self.policy.flat_obs(self._last_obs)

    def _collect_step(self, callback: BaseCallback, log_interval: int, total: int) -> bool:
        """One vector-env step: act, step, store, train, callbacks. False stops training."""
        assert self.env is not None and self._last_episode_starts is not None
        self._ensure_stream()
        assert self._entries is not None and self._policy_state is not None
        callback.on_rollout_start()
        buffer_actions, self._policy_state = self.policy.act(
            self._raw_last_obs(), self._policy_state, self._last_episode_starts,
            deterministic=False,
        )
        actions = self.policy.to_env_action(buffer_actions)
        try:
            new_obs, rewards, dones, infos = self.env.step(actions)
        except (EOFError, BrokenPipeError, ConnectionResetError) as exc:
            raise _dead_worker_error(exc) from None
        self.num_timesteps += self.env.num_envs
        self._update_info_buffer(infos, dones)
        self.invariant_stats.update(infos)
        self._entries.add_step(buffer_actions, rewards, dones, infos, new_obs)
        self._last_obs = new_obs  # type: ignore[assignment]
        self._last_episode_starts = np.asarray(dones, dtype=bool)
        if self._vec_normalize_env is not None:
            self._last_original_obs = self._vec_normalize_env.get_original_obs()
        for done in np.flatnonzero(dones):
            del done
            self._episode_num += 1
            if log_interval is not None and self._episode_num % log_interval == 0:
                self.dump_logs()
        self._update_current_progress_remaining(self.num_timesteps, total)
        self.train(self._updates_due())
        callback.update_locals(locals())
        keep_going = callback.on_step()
        callback.on_rollout_end()
        return bool(keep_going)

    def _updates_per_env_step(self) -> float:
        """``train_ratio`` replayed steps per env step, in updates of ``batch x length`` steps."""
        config = self.config
        return config.train_ratio / (config.batch_size * config.batch_length)

    def _updates_due(self) -> int:
        """Updates owed so that replayed steps / env steps stays at ``train_ratio``."""
        assert self.env is not None and self.replay_buffer is not None
        config = self.config
        if self.num_timesteps <= self.learning_starts:
            return 0
        if not self.replay_buffer.can_sample(config.batch_length):
            return 0
        self._update_credit += self.env.num_envs * self._updates_per_env_step()
        due = int(self._update_credit)
        self._update_credit -= due
        return due

    def train(
        self, gradient_steps: int, batch_size: int | None = None,
        sequence_length: int | None = None,
    ) -> None:
        """Run ``gradient_steps`` updates on replay windows and record their metrics."""
        if gradient_steps <= 0:
            return
        assert self.replay_buffer is not None
        batch = batch_size or self.config.batch_size
        length = sequence_length or self.config.batch_length
        if not self.policy.learner.training:  # walks every module: only when it changes
            self.policy.learner.train()
        self._update_learning_rate(self.policy.optimizer)
        start = time.perf_counter()
        for _ in range(gradient_steps):
            batch_np = self.replay_buffer.sample(batch, length)
            tensors = {k: torch.as_tensor(v, device=self.device) for k, v in batch_np.items()}
            self._update_metrics.add(self.policy.learner.train_step(tensors))
            if self._n_updates == 0 and self.verbose >= 1:
                first = time.perf_counter() - start
                _LOG.info("first update: %.1f s (%s, batch %d x %d)", first,
                          "compiled" if self.policy.learner.compiled else "eager", batch, length)
        elapsed = time.perf_counter() - start
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record_mean("time/updates_per_second", gradient_steps / max(elapsed, 1e-9))
        self._update_metrics.check_finite()

    def _update_learning_rate(self, optimizers: Any) -> None:
        """Set the schedule's current rate on the optimiser; refuse a non-finite or negative one.

        The rate the update applies (warm-up included) is logged as ``train/learning_rate``
        from the update's metrics, once; SB3's own record of the schedule value is not made.
        """
        value = self.lr_schedule(self._current_progress_remaining)
        try:
            lr = float(value)
        except (TypeError, ValueError):
            lr = float("nan")
        if not (math.isfinite(lr) and lr >= 0.0):
            raise ConfigurationError(
                got=f"a learning rate of {value!r} from the schedule at progress "
                f"{self._current_progress_remaining:.3f}",
                expected="a finite float >= 0 at every progress value",
                fix="fix the learning_rate schedule (it must return finite floats >= 0)",
            )
        for group in self.policy.optimizer.param_groups:
            group["lr"] = lr

    def record_update_metrics(self) -> None:
        """Record the means of the update metrics since the last call (``train/`` tags)."""
        self._update_metrics.record(self.logger)

    def dump_logs(self) -> None:
        """Write the ``rollout/``, ``time/``, ``train/`` and ``invariants/`` records."""
        assert self.ep_info_buffer is not None
        time_elapsed = max((time.time_ns() - self.start_time) / 1e9, sys.float_info.epsilon)
        fps = int((self.num_timesteps - self._num_timesteps_at_start) / time_elapsed)
        self.logger.record("time/episodes", self._episode_num, exclude="tensorboard")
        if len(self.ep_info_buffer) > 0 and len(self.ep_info_buffer[0]) > 0:
            self.logger.record("rollout/ep_rew_mean",
                               safe_mean([ep["r"] for ep in self.ep_info_buffer]))
            self.logger.record("rollout/ep_len_mean",
                               safe_mean([ep["l"] for ep in self.ep_info_buffer]))
        if self.ep_success_buffer:
            self.logger.record("rollout/success_rate", safe_mean(list(self.ep_success_buffer)))
        self.logger.record("time/fps", fps)
        self.logger.record("time/time_elapsed", int(time_elapsed), exclude="tensorboard")
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.invariant_stats.record(self.logger)
        self.record_update_metrics()
        if self.policy.nonfinite_obs:
            self.logger.record("rollout/nonfinite_obs", self.policy.nonfinite_obs)
        self.logger.dump(step=self.num_timesteps)

    # -- persistence ----------------------------------------------------------------------------
    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer"], []

    def _excluded_save_params(self) -> list[str]:
        """SB3's list plus what is stored apart (spaces, tensors) or lives only in memory."""
        return [*super()._excluded_save_params(), "observation_space", "action_space",
                "policy_class", "lr_schedule", "_last_obs", "_last_original_obs",
                "_last_episode_starts", "ep_info_buffer", "ep_success_buffer", "_policy_state",
                "_entries", "invariant_stats", "_update_metrics", "action_noise", "rank"]

    def save(
        self, path: Any, exclude: Any = None, include: Any = None
    ) -> None:
        """Save a safe checkpoint (safetensors weights + JSON metadata; never pickle).

        A path without suffix gets ``.zip``. The write is atomic. In a data-parallel run only
        rank 0 writes (the weights are the same on every rank); the other ranks return.
        """
        if distributed.rank():
            return
        persistence.save_model(self, path, exclude=exclude, include=include)

    @classmethod
    def load(
        cls: type[SelfDreamerV3], path: Any, env: GymEnv | None = None,
        device: torch.device | str = "auto", custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False, force_reset: bool = True, **kwargs: Any,
    ) -> SelfDreamerV3:
        """Load a checkpoint written by :meth:`save` (no unpickling, ever).

        ``print_system_info=True`` prints the saving machine's system (OS, Python, torch,
        numpy, gymnasium, SB3, physlink_gym versions; stored by :meth:`save`) and this one's,
        as SB3 does.
        """
        return persistence.load_model(
            cls, path, env=env, device=device, custom_objects=custom_objects,
            force_reset=force_reset, print_system_info=print_system_info, **kwargs,
        )

    def set_parameters(
        self, load_path_or_dict: Any, exact_match: bool = True, device: torch.device | str = "auto"
    ) -> None:
        """Load parameters from a checkpoint path or from :meth:`get_parameters`' dict.

        As in SB3, ``device`` is where a file's tensors are read to; the weights are then
        copied into the model, which stays on its own device (``model.policy.to(...)`` moves
        it).
        """
        persistence.set_parameters(self, load_path_or_dict, exact_match=exact_match,
                                   device=device)

    def save_replay_buffer(self, path: Any) -> None:
        """Save the replay buffer (npz, no pickle), e.g. for exact resume."""
        assert self.replay_buffer is not None
        self.replay_buffer.save(path)

    def load_replay_buffer(self, path: Any, truncate_last_traj: bool = True) -> None:
        """Load a replay buffer written by :meth:`save_replay_buffer`."""
        del truncate_last_traj  # the sequence replay keeps whole streams
        self.replay_buffer = persistence.load_replay(self, path)
        self._entries = None

    def set_physics_invariants(self, invariants: Sequence[Any] | None = None,
                               env: Any = None) -> None:
        """Bind the soft invariants the world model trains against (config ``physics_weight``).

        Without ``invariants``: those of the training env's ``InvariantWrapper`` (its first
        sub-env). ``env`` gives checks like ``pendulum_energy`` their parameters (default: the
        training env's first sub-env, or one made from its spec). ``learn()`` and ``fit()``
        call this when ``physics_weight > 0`` and nothing is bound yet. See
        :mod:`~physlink_gym.agents.dreamerv3.physics`.

        Raises:
            ConfigurationError: with no invariants to use, or a soft one that is not
                differentiable.
        """
        from physlink_gym.agents.dreamerv3.imagination import env_invariants, parameter_env
        from physlink_gym.agents.dreamerv3.physics import physics_terms

        venv = self.get_env()
        if invariants is None:
            invariants = env_invariants(venv)
        if invariants is None:
            raise ConfigurationError(
                got="physics_weight > 0 and no invariants (no env wrapped in InvariantWrapper)",
                expected="the soft invariants to train the world model against",
                fix="call model.set_physics_invariants([invariants.pendulum_energy()], env=env) "
                "before fit(), or wrap the training env in InvariantWrapper")
        if env is None:
            env = parameter_env(venv)
        self.policy.learner.physics = physics_terms(invariants, env, self.action_space)

    def _bind_physics(self) -> None:
        """With ``physics_weight > 0`` and nothing bound yet: the training env's invariants."""
        if self.config.physics_weight > 0 and self.policy.learner.physics is None:
            self.set_physics_invariants()

    # -- training on collected data -------------------------------------------------------------
    def fit(
        self: SelfDreamerV3,
        trajectories: Trajectories,
        gradient_steps: int,
        batch_size: int | None = None,
        sequence_length: int | None = None,
        progress_bar: bool = False,
        tb_log_name: str = "DreamerV3_fit",
        log_interval: int = 100,
    ) -> SelfDreamerV3:
        """Train world model and behaviour on collected trajectories; returns ``self``.

        The trajectories go into the replay (actions converted to the learner's space; flagged
        entries never reach a loss), then ``gradient_steps`` updates on ``(batch_size,
        sequence_length)`` windows run, logged under ``tb_log_name`` every ``log_interval``
        updates, with an optional progress bar. :meth:`learn` can continue online afterwards.
        See :mod:`~physlink_gym.agents.dreamerv3.offline`.
        """
        self._bind_physics()
        offline.fit(
            self, trajectories, gradient_steps, batch_size=batch_size,
            sequence_length=sequence_length, progress_bar=progress_bar,
            tb_log_name=tb_log_name, log_interval=log_interval,
        )
        return self

    def world_model_loss(
        self, trajectories: Trajectories, sequence_length: int | None = None, seed: int = 0
    ) -> dict[str, float]:
        """World-model losses on ``trajectories`` without training (e.g. held-out data).

        See :func:`~physlink_gym.agents.dreamerv3.offline.world_model_loss`.
        """
        return offline.world_model_loss(self, trajectories, sequence_length, seed)

    def imagination_report(
        self, env_or_trajectories: Any, invariants: Any = None, *, steps: int = 64,
        context: int = 5, episodes: int = 10, seed: int = 0,
    ) -> Any:
        """Does the world model dream physics? A ComplianceReport of its open-loop imagination.

        From real start states (``episodes`` episodes of ``Trajectories``, or recorded with this
        model's deterministic policy in an env), the model observes ``context`` steps and then
        imagines the rest of ``steps`` under the real actions; the decoded imagined transitions
        are scored with ``invariants`` (default: those of an :class:`InvariantWrapper` env,
        else those the model's own training env is wrapped with).
        Invariants without ``transition_only`` need a simulator: NOT_APPLICABLE, with why.
        See :mod:`~physlink_gym.agents.dreamerv3.imagination`.
        """
        from physlink_gym.agents.dreamerv3.imagination import imagination_report

        return imagination_report(self, env_or_trajectories, invariants, steps=steps,
                                  context=context, episodes=episodes, seed=seed)

    def visualize(self, env_or_trajectories: Any, path: Any, **kwargs: Any) -> Any:
        """Write the world-model triptych GIF (imagined | real | difference); returns its path.

        See :func:`physlink_gym.viz.triptych` for the keyword arguments (``steps``, ``fps``,
        ``seed``, ``context``, ``dim_names``).
        """
        from physlink_gym.viz import triptych

        return triptych(self, env_or_trajectories, path, **kwargs)


def _dead_worker_error(exc: BaseException) -> TrainingError:
    """A vector env's worker process ended mid-step: say why, from what the worker left."""
    from physlink_gym._worker_errors import worker_errors

    found = worker_errors()
    why = "; ".join(dict.fromkeys(found)) if found else (
        "its own traceback, printed above by that process, says why")
    return TrainingError(
        got=f"a sub-env process of the vector env ended during step() "
        f"({type(exc).__name__} from its pipe): {why}",
        expected="every sub-env returning its step",
        fix="fix the failing env or invariant; an InvariantWrapper(on_error='raise') ends its "
        "process at the first failing invariant: on_error='record' counts failures instead",
    )


def _gym_space(value: Any, name: str) -> spaces.Space[Any]:
    """A Gymnasium space from one, or from a project ``ObservationSpace``/``ActionSpace``."""
    to_gymnasium = getattr(value, "to_gymnasium", None)
    if callable(to_gymnasium):
        value = to_gymnasium()
    if not isinstance(value, spaces.Space):
        raise ConfigurationError(
            got=f"{name}={value!r}",
            expected="a gymnasium space (Box, or Discrete for actions) or a physlink_gym "
            "ObservationSpace / ActionSpace",
            fix=f"pass {name}=gymnasium.spaces.Box(low, high, dtype=np.float32)",
        )
    return value


_LOG = logging.getLogger("physlink_gym")


def _set_log_level(verbose: int) -> None:
    """Print physlink_gym's log messages to stderr: INFO at verbose 1, DEBUG at 2.

    INFO: the first update's time; DEBUG also compiling, allocator settings, skipped updates.
    """
    if verbose < 1:
        return
    _LOG.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    if not _LOG.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("physlink_gym: %(message)s"))
        _LOG.addHandler(handler)


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (a redirected stream too)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


def _schedule_start(schedule: Schedule) -> float:
    try:
        value = schedule(1.0)
        return float(value)
    except Exception as exc:
        raise ConfigurationError(
            got=f"learning_rate={schedule!r}, which fails at progress 1.0 ({exc})",
            expected="a float, or a schedule: a callable of the remaining progress (1 → 0) "
            "returning a float",
            fix="pass learning_rate=4e-5, or e.g. stable_baselines3.common.utils."
            "LinearSchedule(4e-5, 1e-5, 1.0)",
        ) from None
