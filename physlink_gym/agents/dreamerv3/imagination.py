"""Does the world model dream physics? Its decoded imagined transitions, scored by invariants.

Two kinds of imagination are scored with the same invariants as real transitions (those with
``transition_only=True``; the others need a simulator and are skipped, with the reason in the
report), through :func:`physlink_gym.audit` on a :class:`~physlink_gym.data.Trajectories` whose
entries are decoded predictions:

* :func:`actor_imagination` — the rollouts the actor trains on: from every posterior state of
  a replay batch, ``imag_horizon`` steps under the actor's own actions (the update's
  ``imagine``), decoded to observations (``symexp(decoder)``) and rewards (the two-hot reward
  head). Each start is one "episode" of ``imag_horizon + 1`` entries.
* :func:`open_loop_imagination` — from real start states: observe ``context`` real steps, then
  imagine the rest under the real actions (what the triptych shows).

:func:`imagination_report` returns the :class:`~physlink_gym.ComplianceReport` of the latter;
:class:`~physlink_gym.callbacks.ImaginationCallback` logs the former to TensorBoard during
``learn()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from physlink_gym.agents.dreamerv3.distributions import symexp
from physlink_gym.agents.dreamerv3.update import _decode, draw_noise, imagine, world_model_loss
from physlink_gym.errors import ConfigurationError, ValidationError

if TYPE_CHECKING:
    from physlink_gym.agents.dreamerv3.algorithm import DreamerV3
    from physlink_gym.data.trajectories import Trajectories
    from physlink_gym.invariants.core import Invariant
    from physlink_gym.report import ComplianceReport

__all__ = ["ImaginationCallback", "actor_imagination", "imagination_report",
           "open_loop_imagination", "split_transition_only"]


def split_transition_only(invariants: Sequence[Any]) -> tuple[list[Invariant], dict[str, str]]:
    """The invariants that can score imagination, and ``{name: why not}`` for the others."""
    from physlink_gym.invariants.by_name import coerce_invariant

    usable, skipped = [], {}
    for item in invariants:
        inv = coerce_invariant(item)
        if inv.transition_only:
            usable.append(inv)
        else:
            skipped[inv.name] = (
                f"{inv.name} reads the simulator (or does not declare transition_only=True), "
                "so it cannot score imagined transitions")
    return usable, skipped


def env_invariants(venv: Any) -> list[Any] | None:
    """The invariants of the ``InvariantWrapper`` around ``venv``'s first sub-env, or None."""
    if venv is None:
        return None
    try:
        found = venv.get_attr("invariants", [0])[0]
    except AttributeError:
        return None
    return None if found is None else list(found)


def parameter_env(venv: Any) -> Any:
    """An env to bind checks like ``pendulum_energy`` to (their parameters), or None.

    ``venv``'s first sub-env when it lives in this process, else one made from its spec.
    """
    if venv is None:
        return None
    envs = getattr(venv, "envs", None)
    if envs:
        return envs[0]
    try:
        spec = venv.get_attr("spec", [0])[0]
    except AttributeError:
        return None
    return gym.make(spec) if spec is not None else None


def _as_trajectories(model: DreamerV3, obs: np.ndarray, actions: np.ndarray,
                     rewards: np.ndarray) -> Trajectories:
    """Rollouts ``obs [R, H+1, D]``, learner ``actions [R, H, A]``, ``rewards [R, H]``."""
    from physlink_gym.data.trajectories import Trajectories

    rollouts, entries = obs.shape[0], obs.shape[1]
    env_actions = model.policy.to_env_action(actions.reshape(-1, actions.shape[-1]))
    env_actions = np.asarray(env_actions, np.float32).reshape(rollouts, entries - 1, -1)
    action = np.concatenate([np.zeros_like(env_actions[:, :1]), env_actions], 1)
    reward = np.concatenate([np.zeros((rollouts, 1), np.float32), rewards], 1)
    is_first = np.zeros((rollouts, entries), bool)
    is_first[:, 0] = True
    is_last = np.zeros((rollouts, entries), bool)
    is_last[:, -1] = True
    space = model.action_space  # Trajectories hold a Discrete action as its index
    discrete = isinstance(space, gym.spaces.Discrete)
    meta = {"imagined": True, "discrete": discrete,
            "n_actions": int(space.n) if isinstance(space, gym.spaces.Discrete) else None}
    return Trajectories(
        obs=obs.reshape(rollouts * entries, -1), action=action.reshape(rollouts * entries, -1),
        reward=reward.reshape(-1), is_first=is_first.reshape(-1),
        is_terminal=np.zeros(rollouts * entries, bool), is_last=is_last.reshape(-1),
        valid=np.ones(rollouts * entries, bool), meta=meta)


@torch.no_grad()
def actor_imagination(model: DreamerV3, batch: dict[str, np.ndarray], seed: int = 0,
                      ) -> Trajectories:
    """Decode the actor's imagined rollouts from every valid posterior state of ``batch``.

    ``batch`` is a replay batch (``model.replay_buffer.sample(B, T)``); the global torch RNG
    is left untouched (the latent and action samples use ``seed``).
    """
    learner = model.policy.learner
    data = learner.prepare_batch({k: torch.as_tensor(v) for k, v in batch.items()})
    b, t = data["valid"].shape
    was_training = learner.training
    learner.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            noise = draw_noise(learner, b, t, device=learner.device)
            _, _, post, _ = world_model_loss(learner, data, noise.post)
            feats, actions = imagine(learner, post, noise)  # [H+1, N, F], [H, N, A]
            obs = symexp(learner.decoder(feats).float())
            rewards = _decode(learner, learner.reward_head(feats[1:]).float())
    finally:
        learner.train(was_training)
    keep = data["valid"].reshape(-1) > 0  # starts from valid entries, as the actor loss
    obs_np = obs.transpose(0, 1)[keep].cpu().numpy()
    act_np = actions.transpose(0, 1)[keep].float().cpu().numpy()
    rew_np = rewards.transpose(0, 1)[keep].cpu().numpy().astype(np.float32)
    return _as_trajectories(model, obs_np, act_np, rew_np)


def open_loop_imagination(model: DreamerV3, data: Trajectories, *, steps: int = 64,
                          context: int = 5, episodes: int = 10, seed: int = 0) -> Trajectories:
    """Open-loop predictions from real start states: one rollout per episode of ``data``.

    Each rollout starts at the model's reconstruction of the last observed step
    (``context - 1``) and holds the imagined steps after it, under the recorded actions, up to
    ``steps`` entries of the episode; the decoded reward is not predicted here (0).
    """
    from physlink_gym.data.trajectories import Trajectories
    from physlink_gym.viz import learner_actions, open_loop_prediction

    parts = []
    for k, episode in enumerate(data.episodes()):
        if k >= episodes:
            break
        n = min(int(steps), len(episode))
        if n <= context:
            continue
        pred = open_loop_prediction(model, episode.obs[:n], learner_actions(
            model, episode.action[:n]), context=context, seed=seed + k)
        acts = learner_actions(model, episode.action[context:n])
        parts.append(_as_trajectories(model, pred[None, context - 1:n],
                                      acts[None], np.zeros((1, n - context), np.float32)))
    if not parts:
        raise ValidationError(
            got=f"trajectories whose episodes are at most {context} entries long",
            expected=f"episodes longer than context={context}",
            fix="record longer episodes or pass a smaller context")
    return Trajectories.concatenate(parts)


def imagination_report(
    model: DreamerV3, env_or_trajectories: Any, invariants: Sequence[Any] | None = None, *,
    steps: int = 64, context: int = 5, episodes: int = 10, seed: int = 0,
) -> ComplianceReport:
    """Implementation of :meth:`DreamerV3.imagination_report` (see there)."""
    from physlink_gym._audit import audit, env_from_meta
    from physlink_gym.data.trajectories import Trajectories, record_trajectories

    source, env = env_or_trajectories, None
    if not isinstance(source, Trajectories):
        env = source
        source = record_trajectories(env, model, n_episodes=episodes, deterministic=True,
                                     seed=seed)
    if invariants is None:
        invariants = getattr(env, "invariants", None) if env is not None else None
        if invariants is None:  # those the model's own training env is wrapped with
            invariants = env_invariants(model.get_env())
        if invariants is None:
            raise ConfigurationError(
                got="imagination_report without invariants, from a source that names none, "
                "for a model whose env has none",
                expected="invariants=[...], an InvariantWrapper env, or a model trained on one",
                fix="pass invariants=[invariants.finite(), invariants.obs_bounds(), ...]")
    usable, skipped = split_transition_only(invariants)
    if env is None:  # parameters (e.g. Pendulum-v1's) from the env the data was recorded on
        env = env_from_meta(source)
    imagined = open_loop_imagination(model, source, steps=steps, context=context,
                                     episodes=episodes, seed=seed)
    _, report = audit(imagined, usable, env=env, observation_space=model.observation_space,
                      action_space=model.action_space)
    return _with_skipped(report, invariants, skipped)


def _with_skipped(report: ComplianceReport, invariants: Sequence[Any],
                  skipped: dict[str, str]) -> ComplianceReport:
    """Add the skipped invariants to ``report`` as NOT_APPLICABLE, in the given order."""
    from physlink_gym._records import not_applicable_report
    from physlink_gym.invariants.by_name import coerce_invariant

    by_name = {inv.name: inv for inv in report.invariants}
    ordered = []
    for item in invariants:
        inv = coerce_invariant(item)
        ordered.append(by_name.get(inv.name) or not_applicable_report(inv, skipped[inv.name]))
    report.invariants = ordered
    return report


# ---------------------------------------------------------------------------------- callback

class ImaginationCallback(BaseCallback):
    """Score the actor's imagined rollouts with the invariants every ``every_n_steps`` steps.

    Logs, next to the real ``invariants/`` tags: ``imagination/invalid_rate``,
    ``imagination/violation_rate/<name>`` (every transition-only invariant, fired or not),
    ``imagination/residual/<name>`` (histogram) and ``time/imagination_check_ms`` (the cost of
    decoding and scoring, to compare with ``time/update_ms``). The replay batch is drawn with
    a private generator, so training is the same with or without this callback.

    Args:
        invariants: Invariants to score with (default: those of the training env's
            :class:`~physlink_gym.InvariantWrapper`); only ``transition_only`` ones are used.
        every_n_steps: Env steps between two scorings.
        batch_size: Replay windows per scoring (default: the config's batch size), each of
            ``sequence_length`` starts (default: the config's), each imagined
            ``imag_horizon`` steps.
    """

    def __init__(self, invariants: Sequence[Any] | None = None, every_n_steps: int = 1000,
                 batch_size: int | None = None, sequence_length: int | None = None,
                 verbose: int = 0) -> None:
        super().__init__(verbose)
        self.invariants = invariants
        self.every_n_steps = int(every_n_steps)
        self.batch_size = batch_size
        self.sequence_length = sequence_length
        self.last_report: ComplianceReport | None = None
        self._last = 0
        self._rng = np.random.default_rng(0)
        self._usable: list[Invariant] = []
        self._env: Any = None

    def _on_training_start(self) -> None:
        venv = self.model.get_env()
        invariants = self.invariants if self.invariants is not None else env_invariants(venv)
        if invariants is None:
            raise ConfigurationError(
                got="ImaginationCallback without invariants, on an env without InvariantWrapper",
                expected="invariants=[...] or a training env wrapped in InvariantWrapper",
                fix="pass ImaginationCallback(invariants=[invariants.finite(), ...])")
        self._usable, _ = split_transition_only(invariants)
        self._env = parameter_env(venv)  # parameters for checks like pendulum_energy

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last < self.every_n_steps:
            return True
        model: Any = self.model
        cfg = model.config
        length = self.sequence_length or cfg.batch_length
        replay = model.replay_buffer
        if replay is None or not replay.can_sample(length) or not self._usable:
            return True
        self._last = self.num_timesteps
        import time

        from physlink_gym._audit import RESIDUAL_PREFIX, audit

        start = time.perf_counter()
        batch = replay.sample(self.batch_size or cfg.batch_size, length, rng=self._rng)
        imagined = actor_imagination(model, batch, seed=self.num_timesteps)
        audited, report = audit(imagined, self._usable, env=self._env, all_residuals=True,
                                observation_space=model.observation_space,
                                action_space=model.action_space)
        self.logger.record("time/imagination_check_ms", 1e3 * (time.perf_counter() - start))
        self.logger.record("imagination/invalid_rate",
                           report.invalid_steps / max(report.steps, 1))
        rows = ~audited.is_first
        for inv in report.invariants:
            if inv.not_applicable:
                continue
            self.logger.record(f"imagination/violation_rate/{inv.name}", inv.violation_rate)
            residual = audited.extras[RESIDUAL_PREFIX + inv.name][rows]
            self.logger.record(f"imagination/residual/{inv.name}",
                               residual[np.isfinite(residual)].astype(np.float32),
                               exclude=("stdout", "log", "json", "csv"))
        self.last_report = report
        return True
