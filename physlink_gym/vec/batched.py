"""Invariant checks for all sub-envs of a Gymnasium vector env in one vectorised pass.

:class:`BatchedInvariantWrapper` wraps a ``gymnasium.vector.VectorEnv`` and scores the
transitions of every sub-env at once with each invariant's ``batch`` method (the bound checks
of ``finite``, ``obs_bounds``, ``action_bounds``, ``pendulum_energy``, and invariants built with
:func:`~physlink_gym.invariants.batch_invariant`). The rules are those of
:class:`~physlink_gym.InvariantWrapper`: a hard violation or a non-finite residual makes the
transition invalid, a soft violation adds ``residual − tolerance`` to the cost and
``soft_weight × cost`` is taken off the reward. The record is the batched form of the
wrapper's (``info["physlink"]`` with one array per field and a ``_physlink`` mask), which
:func:`~physlink_gym.valid_mask` and DreamerV3's replay read.

Autoreset is handled in each of Gymnasium's modes: with ``NEXT_STEP`` (the default) the step
after an episode ends is a reset step for that sub-env, which holds no transition and gets no
record (its mask is False); with ``SAME_STEP`` the ending transition is checked against
``info["final_obs"]``.

Example:
    >>> import gymnasium as gym
    >>> from physlink_gym import invariants
    >>> venv = BatchedInvariantWrapper(gym.make_vec("Pendulum-v1", num_envs=4),
    ...                                [invariants.finite(), invariants.obs_bounds()])
    >>> obs, info = venv.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
    >>> record = info["physlink"]
    >>> record["valid"].tolist(), info["_physlink"].tolist()
    ([True, True, True, True], [True, True, True, True])
    >>> venv.compliance_report().steps
    4
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import gymnasium as gym
import numpy as np

from physlink_gym._records import make_slot, not_applicable_report
from physlink_gym.errors import ConfigurationError, ValidationError
from physlink_gym.invariants.by_name import coerce_invariant
from physlink_gym.invariants.core import Invariant, NotApplicableError
from physlink_gym.report import MAX_KEPT_EPISODES, ComplianceReport
from physlink_gym.wrappers import InvariantWarning, _options

__all__ = ["BatchedInvariantWrapper"]

_FLUSH_EVERY = 1024  # vector steps between folds of the residuals into the per-env reports


class _SingleEnvView:
    """What invariants bind to: one sub-env's spaces, ``dt`` and parameters (never stepped)."""

    def __init__(self, venv: Any) -> None:
        self.observation_space = venv.single_observation_space
        self.action_space = venv.single_action_space
        self._base = None
        envs = getattr(venv.unwrapped, "envs", None)  # SyncVectorEnv: the sub-envs themselves
        spec: Any = getattr(venv.unwrapped, "spec", None)
        if envs:
            self._base = envs[0].unwrapped
        elif getattr(spec, "id", None):  # e.g. AsyncVectorEnv: one instance, never stepped
            try:
                self._base = gym.make(spec.id).unwrapped
            except gym.error.Error:
                self._base = None
        self.dt = float(getattr(self._base, "dt", math.nan))
        self.unwrapped = self

    def __getattr__(self, name: str) -> Any:
        base = self.__dict__.get("_base")
        if base is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(base, name)


class BatchedInvariantWrapper(gym.vector.VectorWrapper):
    """Score every sub-env's transition in one vectorised pass per invariant.

    Args:
        env: A ``gymnasium.vector.VectorEnv`` (any autoreset mode).
        invariants: Invariants whose bound check has a ``batch`` method (built-ins, or
            :func:`~physlink_gym.invariants.batch_invariant`); others are NOT_APPLICABLE here
            (wrap each sub-env in :class:`~physlink_gym.InvariantWrapper` for those).
        soft_weight: Weight of the soft penalty taken off the reward.
        info_key: Key of the batched record in ``info``.
        hard_cost: Cost of a flagged transition, as in :class:`~physlink_gym.InvariantWrapper`.
    """

    def __init__(self, env: gym.vector.VectorEnv, invariants: Iterable[Invariant], *,
                 soft_weight: float = 1.0, info_key: str = "physlink",
                 hard_cost: float = 0.0) -> None:
        if not isinstance(env, gym.vector.VectorEnv):
            raise ConfigurationError(
                got=f"env of type {type(env).__name__}", expected="a gymnasium.vector.VectorEnv",
                fix='pass gym.make_vec("Pendulum-v1", num_envs=16), or use InvariantWrapper '
                "for a single env")
        super().__init__(env)
        _, self.soft_weight, _, self.info_key = _options("flag", soft_weight, "record",
                                                         info_key, hard_cost)
        self.hard_cost = float(hard_cost)
        if isinstance(invariants, (Invariant, str)) or not isinstance(invariants, Iterable):
            raise ConfigurationError(got=f"invariants={invariants!r}",
                                     expected="a list of Invariant objects",
                                     fix="pass [invariants.finite(), ...]")
        self._invariants = [coerce_invariant(i) for i in invariants]
        names = [i.name for i in self._invariants]
        if len(set(names)) != len(names):
            raise ConfigurationError(got=f"invariant names {names}", expected="unique names",
                                     fix="pass name='...' to a factory to rename a duplicate")
        mode = env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        self._same_step = mode == gym.vector.AutoresetMode.SAME_STEP
        self._checks: list[tuple[Invariant, Any]] = []
        self._not_applicable: dict[str, Any] = {}
        self._bind(_SingleEnvView(env))
        n = self.num_envs
        self._slots = [[make_slot(inv) for inv, _ in self._checks] for _ in range(n)]
        self._residuals: list[list[np.ndarray]] = [[] for _ in self._checks]  # [n] per step
        self._where: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # rows, episode, step
        self._prev: Any = None
        self._pending = np.zeros(n, bool)  # NEXT_STEP: this step is a reset step
        self._first = np.ones(n, bool)
        self._episode = np.zeros(n, np.int64)
        self._step = np.zeros(n, np.int64)
        self._ep_cost = np.zeros(n)
        self._ep_inv_cost = np.zeros((len(self._checks), n))
        self._steps = np.zeros(n, np.int64)
        self._invalid = np.zeros(n, np.int64)
        self._episodes = np.zeros(n, np.int64)
        self._episode_costs: list[list[float]] = [[] for _ in range(n)]
        self._since_flush = 0

    def _bind(self, view: _SingleEnvView) -> None:
        for inv in self._invariants:
            reason = None
            try:
                check = inv.bind(view)
            except NotApplicableError as exc:
                reason = str(exc)
            else:
                if not callable(getattr(check, "batch", None)):
                    reason = (f"{inv.name} has no vectorised check (batch); wrap each sub-env "
                              "in InvariantWrapper to run it")
            if reason is not None:
                self._not_applicable[inv.name] = not_applicable_report(inv, reason)
                warnings.warn(f"physlink_gym: invariant {inv.name!r} is NOT_APPLICABLE to the "
                              f"batched wrapper: {reason}", InvariantWarning, stacklevel=3)
                continue
            self._checks.append((inv, check))

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset every sub-env; episodes in progress end without a cost entry."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._prev = _copy(obs)
        self._pending[:] = False
        self._first[:] = True
        self._step[:] = 0
        self._ep_cost[:] = 0.0
        self._ep_inv_cost[:] = 0.0
        return obs, info

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step every sub-env, check all transitions at once, penalise and record."""
        if self._prev is None:
            from physlink_gym.wrappers import ResetNeededError

            raise ResetNeededError(got="step() before reset()", expected="reset() first",
                                   fix="call venv.reset(seed=...) before venv.step(actions)")
        obs, reward, terminated, truncated, info = self.env.step(actions)
        n = self.num_envs
        rows = ~self._pending
        next_obs = obs
        ended = np.logical_or(terminated, truncated)
        if self._same_step and ended.any():
            next_obs = _copy(obs)
            final: Any = info["final_obs"]
            for i in np.flatnonzero(ended):
                _set_row(next_obs, int(i), final[i])
        all_rows = bool(rows.all())
        actions = np.asarray(actions)
        reward = np.asarray(reward, np.float64)
        batch = {"obs": self._prev, "next_obs": next_obs, "action": actions, "reward": reward,
                 "first": self._first}
        if not all_rows:
            batch = {k: _take(v, rows) for k, v in batch.items()}
        valid, cost, residuals, violated = self._score(batch, rows, all_rows)
        self._where.append((rows, self._episode.copy(), self._step.copy()))
        raw_reward = reward
        if self.soft_weight and any(inv.mode == "soft" for inv, _ in self._checks):
            reward = reward - self.soft_weight * cost  # 0 where no transition
        if self.hard_cost:
            cost = np.where(rows & ~valid, cost + self.hard_cost, cost)
        info[self.info_key] = {"valid": valid, "cost": cost, "residuals": residuals,
                               "violated": violated, "errors": np.zeros(n, np.int64),
                               "raw_reward": raw_reward}
        info["_" + self.info_key] = rows.copy()
        env_cost = info.get("cost")
        info["cost"] = cost if env_cost is None else cost + np.asarray(env_cost, np.float64)
        info["_cost"] = np.ones(n, bool)
        self._account(rows, valid, cost, ended)
        self._prev = _copy(obs)
        return obs, reward, terminated, truncated, info

    def _score(self, batch: dict[str, Any], rows: np.ndarray, all_rows: bool,
               ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Residuals of every invariant; the valid flags, costs and violations they give."""
        n = self.num_envs
        valid, cost = np.ones(n, bool), np.zeros(n)
        residuals: dict[str, np.ndarray] = {}
        violated: dict[str, np.ndarray] = {}
        m = n if all_rows else int(rows.sum())
        for k, (inv, check) in enumerate(self._checks):
            tol = float(inv.tolerance)
            out = np.array(check.batch(batch), np.float64) if m else np.zeros(0)
            if out.shape != (m,):
                raise ValidationError(
                    got=f"invariant {inv.name!r}: batch() returned shape {out.shape}",
                    expected=f"one residual per transition, shape ({m},)",
                    fix="return a 1-D array with one residual per row of the batch")
            if all_rows:
                r, bad = out, ~(out <= tol)
            else:
                r = np.full(n, np.nan)
                r[rows] = out
                bad = ~(r <= tol) & rows
            if bad.any():
                nonfinite = bad & ~np.isfinite(r)
                if inv.mode == "hard":
                    valid &= ~bad
                else:
                    valid &= ~nonfinite
                    excess = np.where(bad & ~nonfinite, r - tol, 0.0)
                    cost += excess
                    self._ep_inv_cost[k] += excess
            residuals[inv.name], violated[inv.name] = r, bad
            self._residuals[k].append(r)
        return valid, cost, residuals, violated

    # ------------------------------------------------------------------ bookkeeping
    def _account(self, rows: np.ndarray, valid: np.ndarray, cost: np.ndarray,
                 ended: np.ndarray) -> None:
        self._steps += rows
        self._invalid += rows & ~valid
        self._ep_cost += cost
        self._step += rows
        self._first[rows] = False
        closing = ended & rows
        for i in np.flatnonzero(closing):  # episode ends are rare: a loop is fine
            self._episode_costs[i].append(float(self._ep_cost[i]))
            del self._episode_costs[i][:-MAX_KEPT_EPISODES]
            for k, slot in enumerate(self._slots[i]):
                slot.rep.episode_costs.append(float(self._ep_inv_cost[k, i]))
                del slot.rep.episode_costs[:-MAX_KEPT_EPISODES]
        if closing.any():
            self._episodes += closing
            self._episode[closing] += 1
            self._ep_cost[closing] = 0.0
            self._ep_inv_cost[:, closing] = 0.0
            self._step[closing] = 0
            self._first[closing] = True
        if self._same_step:
            self._pending[:] = False
        else:
            self._pending = np.array(ended, bool)  # their next step is a reset step
        self._since_flush += 1
        if self._since_flush >= _FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        """Fold the buffered residuals into each sub-env's reports (per env, per invariant)."""
        self._since_flush = 0
        if not self._where:
            return
        rows, episode, step = (np.stack(parts) for parts in zip(*self._where, strict=True))
        self._where.clear()
        for k, buffer in enumerate(self._residuals):
            r = np.stack(buffer)  # [steps, n]
            buffer.clear()
            for i in range(self.num_envs):
                sel = rows[:, i]
                if sel.any():
                    self._slots[i][k].add_batch(r[sel, i], episode[sel, i], step[sel, i])

    # ------------------------------------------------------------------ reporting
    def compliance_report(self, env_index: int | None = None) -> ComplianceReport:
        """The report of one sub-env, or of all of them merged (``env_index=None``)."""
        self._flush()
        indices = range(self.num_envs) if env_index is None else [env_index]
        reports = [self._report(i) for i in indices]
        if env_index is not None:
            return reports[0]
        return ComplianceReport.merge(reports, reindex=True)

    def _report(self, i: int) -> ComplianceReport:
        by_name = {slot.name: slot.snapshot() for slot in self._slots[i]}
        by_name.update({k: v for k, v in self._not_applicable.items()})
        return ComplianceReport(
            invariants=[by_name[inv.name] for inv in self._invariants],
            steps=int(self._steps[i]), invalid_steps=int(self._invalid[i]),
            episodes=int(self._episodes[i]), episode_costs=list(self._episode_costs[i]))

    @property
    def not_applicable(self) -> dict[str, str]:
        """``{name: reason}`` for the invariants this wrapper cannot run."""
        return {k: str(r.not_applicable) for k, r in self._not_applicable.items()}


# Observations of a vector env: an array [n, ...], or a Dict space's dict of such arrays.
def _copy(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {k: np.array(v, copy=True) for k, v in obs.items()}
    return np.array(obs, copy=True)


def _take(x: Any, rows: np.ndarray) -> Any:
    return {k: v[rows] for k, v in x.items()} if isinstance(x, dict) else x[rows]


def _set_row(obs: Any, i: int, value: Any) -> None:
    if isinstance(obs, dict):
        for k, v in obs.items():
            v[i] = value[k]
    else:
        obs[i] = value
