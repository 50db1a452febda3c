"""Audit collected trajectories offline with the same invariants the wrapper checks online.

:func:`audit` runs :class:`~physlink_gym.invariants.Invariant` objects over every transition of
a :class:`~physlink_gym.data.Trajectories` (entry ``t`` holds the transition ``obs[t-1] →
obs[t]`` under ``action[t]``, ``reward[t]``) and returns the audited trajectories and the
:class:`~physlink_gym.ComplianceReport`, with the same rules as
:class:`~physlink_gym.InvariantWrapper`: a hard violation or a non-finite residual marks the
entry invalid; a soft violation adds ``residual − tolerance`` to the step's cost; the residual of
each soft invariant, the cost and the penalised reward ``reward − soft_weight × cost`` become
extras (the raw reward is kept). On the same transition online and offline agree.

Invariants are bound once, as online, to ``env`` when given (it is never stepped), else to a
stand-in that carries the spaces and ``dt``. Checks with a ``batch`` method (``finite``,
``obs_bounds``, ``action_bounds``, ``pendulum_energy``) run vectorised; others (user callables,
``energy_balance``) run transition by transition with their ``on_reset`` hook at each episode
start. MuJoCo invariants whose residual needs only ``qpos``/``qvel`` at the ends of a step
(``joint_limits``, ``kinematic_consistency``) replay offline when ``env`` is the MuJoCo env
and the data carries those states (``record_trajectories(..., sim_state=True)``); the others
need the live step and are NOT_APPLICABLE offline, with a message that says so.

Example:
    >>> import gymnasium as gym
    >>> from physlink_gym import invariants
    >>> from physlink_gym.data import record_trajectories
    >>> env = gym.make("Pendulum-v1")
    >>> data = record_trajectories(env, n_steps=300, seed=0)
    >>> data.obs[150, 2] = float("nan")  # a corrupted sensor reading
    >>> audited, report = audit(data, [invariants.finite(), invariants.pendulum_energy()],
    ...                         env=env)
    >>> np.flatnonzero(~audited.valid).tolist()  # into and out of the NaN observation
    [150, 151]
    >>> report["finite"].violations, sorted(audited.extras)[:2]
    (1, ['audit_cost', 'audit_penalised_reward'])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from physlink_gym._records import Slot, make_slot, not_applicable_report
from physlink_gym.data.trajectories import Trajectories
from physlink_gym.errors import ConfigurationError, ValidationError
from physlink_gym.invariants.by_name import coerce_invariant
from physlink_gym.invariants.core import Invariant, NotApplicableError, to_residual
from physlink_gym.report import MAX_KEPT_EPISODES, ComplianceReport
from physlink_gym.wrappers import InvariantWarning, _finite_transition

__all__ = ["COST_KEY", "PENALISED_REWARD_KEY", "RESIDUAL_PREFIX", "audit", "env_from_meta"]

COST_KEY = "audit_cost"
PENALISED_REWARD_KEY = "audit_penalised_reward"
RESIDUAL_PREFIX = "audit_residual."
_CHUNK = 1 << 16  # transitions per vectorised call: bounded memory on large observations


class _OfflineEnv:
    """What invariants bind to offline: spaces, ``dt`` and, for MuJoCo, a private ``MjData``.

    Attributes it does not have are read from the real env's ``unwrapped`` when one is given
    (e.g. Pendulum-v1's ``g``, ``m``, ``l``, ``max_torque``).
    """

    def __init__(self, base: Any, observation_space: Any, action_space: Any, dt: float) -> None:
        self._base = base
        self.observation_space = observation_space
        self.action_space = action_space
        self.dt = dt
        self.unwrapped = self
        self.spec = getattr(base, "spec", None)
        self.model: Any = getattr(base, "model", None)
        self.data: Any = None
        if self.model is not None:
            import mujoco

            if isinstance(self.model, mujoco.MjModel):
                self.data = mujoco.MjData(self.model)  # the env's own state stays untouched
        self.frame_skip = getattr(base, "frame_skip", 1)

    def __getattr__(self, name: str) -> Any:
        base = self.__dict__.get("_base")
        if base is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(base, name)


def _space(value: Any, name: str) -> Any:
    """A Gymnasium space from one, or from a project ``ObservationSpace``/``ActionSpace``."""
    if value is None:
        return None
    to_gym = getattr(value, "to_gymnasium", None)
    if callable(to_gym):
        return to_gym()
    from gymnasium import spaces

    if isinstance(value, spaces.Space):
        return value
    raise ConfigurationError(
        got=f"{name}={value!r}",
        expected="a gymnasium space or a physlink_gym ObservationSpace / ActionSpace",
        fix=f"pass {name}=gymnasium.spaces.Box(...) or leave it None",
    )


def _invariants(items: Any) -> list[Invariant]:
    if isinstance(items, (Invariant, str)) or not isinstance(items, Iterable):
        raise ConfigurationError(got=f"invariants={items!r}", expected="a list of invariants",
                                 fix="pass [invariants.finite(), ...] or ['finite', ...]")
    result = [coerce_invariant(item) for item in items]
    names = [inv.name for inv in result]
    if len(set(names)) != len(names):
        raise ConfigurationError(got=f"invariant names {names}", expected="unique names",
                                 fix="pass name='...' to a factory to rename a duplicate")
    return result


def _offline_reason(inv: Invariant, check: Any, data: Trajectories, stand_in: _OfflineEnv,
                    ) -> str | None:
    """Why a bound MuJoCo check cannot run on ``data`` offline (None when it can)."""
    live = getattr(check, "needs_live_step", None)
    if live is None:
        return None
    if live:
        return (f"{inv.name} needs {live}, which recorded data does not carry; check it "
                "online with InvariantWrapper")
    model = stand_in.model
    qpos, qvel = data.extras.get("qpos"), data.extras.get("qvel")
    if qpos is None or qvel is None:
        return (f"{inv.name} needs the simulator state of every entry: record it with "
                "record_trajectories(env, ..., sim_state=True) (extras 'qpos' and 'qvel')")
    if qpos.shape[1:] != (model.nq,) or qvel.shape[1:] != (model.nv,):
        return (f"{inv.name}: extras qpos {qpos.shape[1:]} / qvel {qvel.shape[1:]} do not fit "
                f"the model's nq={model.nq} / nv={model.nv}; pass the env the data came from")
    return None


def _bind(invariants: list[Invariant], stand_in: _OfflineEnv, data: Trajectories, env: Any,
          ) -> tuple[list[Slot], dict[str, Any]]:
    slots: list[Slot] = []
    not_applicable: dict[str, Any] = {}
    for inv in invariants:
        check: Any = None
        try:
            check = inv.bind(stand_in)
        except NotApplicableError as exc:
            reason: str | None = str(exc)
            if "mujoco" in inv.requires and env is None:
                reason = (f"{inv.name} needs the MuJoCo model: pass env=gymnasium.make(...) of "
                          "the env the data came from")
        else:
            reason = _offline_reason(inv, check, data, stand_in)
        if reason is not None:
            not_applicable[inv.name] = not_applicable_report(inv, reason)
            warnings.warn(f"physlink_gym: invariant {inv.name!r} is NOT_APPLICABLE offline: "
                          f"{reason}", InvariantWarning, stacklevel=3)
            continue
        slot = make_slot(inv)
        slot.attach(check)
        slots.append(slot)
    return slots, not_applicable


def env_from_meta(data: Trajectories) -> Any:
    """``gym.make`` of the env id recorded in ``data.meta`` when registered here, else None."""
    import gymnasium as gym

    env_id = data.meta.get("env_id")
    if not isinstance(env_id, str) or not env_id:
        return None
    try:
        gym.spec(env_id)
        return gym.make(env_id)
    except gym.error.Error:
        return None


def _dt(dt: Any, data: Trajectories, env: Any) -> float:
    for value in (dt, data.meta.get("dt"), getattr(getattr(env, "unwrapped", None), "dt", None)):
        if value is None:
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ConfigurationError(got=f"dt={value!r}", expected="a finite dt > 0 (seconds)",
                                     fix="pass dt=0.05 (the env's seconds per step)")
        return value
    return math.nan


def audit(
    data: Trajectories | Sequence[dict[str, Any]],
    invariants: Iterable[Invariant | str | dict[str, Any]],
    *,
    env: Any = None,
    observation_space: Any = None,
    action_space: Any = None,
    dt: float | None = None,
    soft_weight: float = 1.0,
    all_residuals: bool = False,
) -> tuple[Trajectories, ComplianceReport]:
    """Check every transition of ``data`` against ``invariants``; return it audited, and a report.

    Args:
        data: :class:`~physlink_gym.data.Trajectories`, or a list of per-step dicts (see
            :meth:`Trajectories.from_list <physlink_gym.data.Trajectories.from_list>`).
        invariants: Invariant objects, or built-in names (``"finite"``, ``"obs_bounds"``, ...).
        env: The env the data came from (optional; never stepped): its spaces, ``dt`` and
            parameters (Pendulum-v1's, a MuJoCo model) are what the invariants bind to.
        observation_space: The observation space (a Gymnasium ``Box`` or an
            :class:`~physlink_gym.spaces.ObservationSpace`), for ``obs_bounds`` without env.
        action_space: The action space (``Box``/``Discrete`` or an
            :class:`~physlink_gym.spaces.ActionSpace`), for ``action_bounds`` without env.
        dt: Seconds per step (``transition["dt"]``); default ``data.meta["dt"]``, then the
            env's, else NaN.
        soft_weight: Weight of the soft penalty in ``audit_penalised_reward``.
        all_residuals: Keep ``audit_residual.<name>`` for hard invariants too.

    Returns:
        ``(audited, report)``: a copy of ``data`` whose ``valid`` is False where the data was
        already flagged or a hard invariant is violated or a residual is not finite, with the
        extras ``audit_cost``, ``audit_penalised_reward`` and ``audit_residual.<name>`` per
        soft invariant (0 on episode starts, which hold no transition); and the
        :class:`~physlink_gym.ComplianceReport` with the episode and step of each violation.
    """
    if not isinstance(data, Trajectories):
        if isinstance(data, (list, tuple)):
            data = Trajectories.from_list(data, action_space=_space(action_space, "action_space"))
        else:
            raise ValidationError(got=f"data of type {type(data).__name__}",
                                  expected="Trajectories or a list of per-step dicts",
                                  fix="load it first: Trajectories.load(path)")
    if isinstance(soft_weight, bool) or not isinstance(soft_weight, (int, float)) or not (
        0 <= soft_weight < math.inf
    ):
        raise ConfigurationError(got=f"soft_weight={soft_weight!r}", expected="a finite float >= 0",
                                 fix="pass soft_weight=1.0")
    invariant_list = _invariants(invariants)
    base = getattr(env, "unwrapped", None) if env is not None else None
    obs_space = _space(observation_space, "observation_space") or getattr(
        env, "observation_space", None)
    act_space = _space(action_space, "action_space") or getattr(env, "action_space", None)
    stand_in = _OfflineEnv(base, obs_space, act_space, _dt(dt, data, env))
    slots, not_applicable = _bind(invariant_list, stand_in, data, env)
    return _Audit(data, slots, stand_in, float(soft_weight), all_residuals).run(
        invariant_list, not_applicable)


class _Audit:
    """One pass of the bound checks over the transitions of ``data``."""

    def __init__(self, data: Trajectories, slots: list[Slot], stand_in: _OfflineEnv,
                 soft_weight: float, all_residuals: bool = False) -> None:
        self.data = data
        self.all_residuals = all_residuals
        self.slots = slots
        self.stand_in = stand_in
        self.soft_weight = soft_weight
        n = len(data)
        self.rows = np.flatnonzero(~data.is_first)  # entries that hold a transition
        self.episode = np.cumsum(data.is_first) - 1
        starts = np.flatnonzero(data.is_first)
        self.step = np.arange(n) - starts[self.episode] - 1  # transition index in its episode
        self.first = data.is_first[np.maximum(self.rows - 1, 0)]  # first transition of episode
        self.discrete = bool(data.meta.get("discrete"))

    def run(self, invariants: list[Invariant], not_applicable: dict[str, Any],
            ) -> tuple[Trajectories, ComplianceReport]:
        data, n, rows = self.data, len(self.data), self.rows
        residuals = {s.name: np.full(n, np.nan) for s in self.slots}
        failed = {s.name: np.zeros(n, bool) for s in self.slots}  # the check raised (ERROR)
        vector = [s for s in self.slots if callable(getattr(s.check, "batch", None))]
        for slot in vector:
            residuals[slot.name][rows] = self._batch(slot)
        looped = [s for s in self.slots if s not in vector]
        nonfinite_data = np.zeros(n, bool)
        if looped:
            self._loop(looped, residuals, failed, nonfinite_data)
        valid = data.valid.copy()
        cost = np.zeros(n)
        for slot in self.slots:
            r = residuals[slot.name]
            checked = rows[~failed[slot.name][rows]]
            bad = np.zeros(n, bool)
            bad[checked] = slot.add_batch(r[checked], self.episode[checked], self.step[checked])
            nonfinite = bad & ~np.isfinite(r)
            valid &= ~(bad if slot.hard else nonfinite)
            valid &= ~(failed[slot.name] & nonfinite_data)  # a failure on NaN data: invalid
            if not slot.hard:
                excess = np.where(bad & ~nonfinite, r - slot.tol, 0.0)
                cost += excess
                slot.rep.episode_costs = self._per_episode(excess)
        flagged = int(np.count_nonzero(~valid[rows] & data.valid[rows]))
        extras = dict(data.extras)
        for slot in self.slots:
            if self.all_residuals or not slot.hard:
                extras[RESIDUAL_PREFIX + slot.name] = np.nan_to_num(
                    residuals[slot.name], nan=0.0, posinf=np.finfo(np.float32).max)
        extras[COST_KEY] = cost
        extras[PENALISED_REWARD_KEY] = data.reward - self.soft_weight * cost
        meta = {**data.meta, "audit": {
            "invariants": [{"name": i.name, "mode": i.mode, "tolerance": float(i.tolerance)}
                           for i in invariants],
            "soft_weight": self.soft_weight, "flagged": flagged,
        }}  # fmt: skip
        audited = Trajectories(obs=data.obs, action=data.action, reward=data.reward,
                               is_first=data.is_first, is_terminal=data.is_terminal,
                               is_last=data.is_last, valid=valid, extras=extras, meta=meta)
        reports = {s.name: s.snapshot() for s in self.slots}
        reports.update(not_applicable)
        report = ComplianceReport(
            invariants=[reports[i.name] for i in invariants], steps=int(rows.size),
            invalid_steps=int(np.count_nonzero(~valid[rows])),
            episodes=data.num_episodes, episode_costs=self._per_episode(cost))
        return audited, report

    def _per_episode(self, per_entry: np.ndarray) -> list[float]:
        starts = np.flatnonzero(self.data.is_first)
        if not starts.size:
            return []
        sums = np.add.reduceat(per_entry, starts)
        return [float(c) for c in sums[-MAX_KEPT_EPISODES:]]

    # ------------------------------------------------------------------ vectorised checks
    def _batch(self, slot: Slot) -> np.ndarray:
        data, out = self.data, np.empty(self.rows.size)
        for lo in range(0, self.rows.size, _CHUNK):
            rows = self.rows[lo:lo + _CHUNK]
            batch = {"obs": data.obs[rows - 1], "next_obs": data.obs[rows],
                     "action": data.action[rows], "reward": data.reward[rows],
                     "first": self.first[lo:lo + _CHUNK]}
            r = np.asarray(slot.check.batch(batch), np.float64)
            if r.shape != rows.shape or (r < 0).any():
                raise ValidationError(
                    got=f"invariant {slot.name!r}: batch() returned shape {r.shape} "
                    f"(min {np.nanmin(r) if r.size else 'n/a'})",
                    expected=f"one residual >= 0 per transition, shape {rows.shape}",
                    fix="return one residual per row from batch(), or drop batch()")
            out[lo:lo + _CHUNK] = r
        return out

    # ------------------------------------------------------------------ transition by transition
    def _loop(self, slots: list[Slot], residuals: dict[str, np.ndarray],
              failed: dict[str, np.ndarray], nonfinite_data: np.ndarray) -> None:
        data, stand_in = self.data, self.stand_in
        replay = any(hasattr(s.check, "needs_live_step") for s in slots)
        sim, qpos, qvel = stand_in.data, data.extras.get("qpos"), data.extras.get("qvel")
        info_keys = [k for k in data.extras if k not in ("qpos", "qvel")]
        t: dict[str, Any] = {"dt": stand_in.dt, "env": stand_in, "cache": {}}
        for i in range(len(data)):
            if replay and qpos is not None and qvel is not None:
                sim.qpos[:] = qpos[i]  # the recorded state at the end of the step
                sim.qvel[:] = qvel[i]
            if data.is_first[i]:
                for s in slots:
                    s.start_episode()
                    if s.on_reset is not None:
                        self._call(s, s.on_reset, stand_in, data.obs[i])
                continue
            action: Any = data.action[i]
            if self.discrete:
                action = int(action[0])
            t.update(obs=data.obs[i - 1], action=action, reward=float(data.reward[i]),
                     next_obs=data.obs[i], terminated=bool(data.is_terminal[i]),
                     truncated=bool(data.is_last[i] and not data.is_terminal[i]),
                     info={k: data.extras[k][i] for k in info_keys}, step=int(self.step[i]),
                     cache={})
            for s in slots:
                try:
                    residuals[s.name][i] = to_residual(s.check(t))
                except BaseException as exc:  # an invariant's failure is an ERROR, as online
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    self._failed(s, exc)
                    failed[s.name][i] = True
                    nonfinite_data[i] = not _finite_transition(t)

    def _call(self, slot: Slot, hook: Any, *args: Any) -> None:
        try:
            hook(*args)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._failed(slot, exc)

    @staticmethod
    def _failed(slot: Slot, exc: BaseException) -> None:
        if slot.error(exc, disable=False):
            warnings.warn(f"physlink_gym: invariant {slot.name!r} failed offline "
                          f"({slot.rep.last_error}); counted as ERROR", InvariantWarning,
                          stacklevel=4)
