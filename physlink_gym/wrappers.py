"""InvariantWrapper: check every transition of a Gymnasium env against physical invariants.

Each step sets ``info[info_key]`` (default ``"physlink"``) to a dict with the same keys and plain
Python types on every step, so Gymnasium vector envs can batch it:

* ``valid`` (bool): False when a hard invariant was violated, or any residual was NaN/inf
  (whatever the mode). An invariant ERROR does not flag the transition: see ``errors``.
* ``cost`` (float): ``Σ_soft max(0, residual − tolerance)`` over the soft invariants with a
  finite residual, plus ``hard_cost`` on a flagged step (0 by default). It is also set as
  ``info["cost"]`` (the safety-gymnasium/OmniSafe convention), added to the env's own
  ``info["cost"]`` when there is one.
* ``residuals`` (dict[str, float]): one entry per applicable invariant (NaN when it errored or
  is disabled). ``violated`` (dict[str, bool]): the same keys; a fixed-key dict of bools rather
  than a list of names, because vector envs batch it into one bool array per invariant.
* ``errors`` (int): invariants that raised or returned garbage on this step.
* ``raw_reward`` (float): the env's own reward.

The returned reward is ``raw_reward − soft_weight × cost`` when there are soft invariants
(otherwise the env's reward, untouched). At episode end ``info[info_key + "_episode"]`` holds
``{"length", "cost", "invalid_steps", "errors", "violations": {name: int}}``.

Example:
    >>> import gymnasium as gym
    >>> from physlink_gym import invariants
    >>> env = InvariantWrapper(gym.make("Pendulum-v1"), [invariants.finite()])
    >>> obs, _ = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    >>> record = info["physlink"]
    >>> record["valid"], record["residuals"], info["cost"]
    (True, {'finite': 0.0}, 0.0)
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Any, SupportsFloat

import cloudpickle
import gymnasium as gym
import numpy as np

from physlink_gym._records import (
    ACTIVE,
    DISABLED,
    SKIP,
    Slot,
    make_slot,
    not_applicable_report,
    valid_mask,
)
from physlink_gym._worker_errors import report_in_worker
from physlink_gym.errors import ConfigurationError, PhysLinkError, ValidationError
from physlink_gym.invariants.by_name import coerce_invariant
from physlink_gym.invariants.core import Invariant, NotApplicableError, to_residual
from physlink_gym.report import MAX_KEPT_EPISODES, ComplianceReport

__all__ = [
    "InvariantError",
    "InvariantViolationError",
    "InvariantWarning",
    "InvariantWrapper",
    "ResetNeededError",
    "StepAPIError",
    "valid_mask",
]

ON_HARD = ("flag", "truncate", "terminate", "raise")
ON_ERROR = ("record", "raise", "disable")
_NAN = float("nan")
_FLUSH_EVERY = 2048


class InvariantWarning(UserWarning):
    """An invariant is NOT_APPLICABLE, failed (ERROR), or the env was misused (no reset)."""


class InvariantViolationError(PhysLinkError, RuntimeError):
    """A hard invariant was violated and ``on_hard="raise"``."""


class InvariantError(PhysLinkError, RuntimeError):
    """An invariant raised or returned garbage and ``on_error="raise"``."""


class StepAPIError(ValidationError):
    """The wrapped env's ``step`` does not return Gymnasium's 5-tuple."""


class ResetNeededError(PhysLinkError, gym.error.ResetNeeded):
    """``step()`` was called before the first ``reset()`` (also Gymnasium's ``ResetNeeded``)."""


def _options(on_hard: Any, soft_weight: Any, on_error: Any, info_key: Any, hard_cost: Any = 0.0,
             ) -> tuple[str, float, str, str]:
    for name, value, options in (("on_hard", on_hard, ON_HARD), ("on_error", on_error, ON_ERROR)):
        if value not in options:
            raise ConfigurationError(got=f"{name}={value!r}", expected=f"one of {options}",
                                     fix=f"pass {name}={options[0]!r}")
    for name, w in (("soft_weight", soft_weight), ("hard_cost", hard_cost)):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
            raise ConfigurationError(got=f"{name}={w!r}", expected="a finite float >= 0",
                                     fix=f"pass {name}=1.0")
    w = soft_weight
    if not isinstance(info_key, str) or not info_key:
        raise ConfigurationError(got=f"info_key={info_key!r}", expected="a non-empty str",
                                 fix="pass info_key='physlink'")
    return str(on_hard), float(w), str(on_error), info_key


class InvariantWrapper(gym.Wrapper[Any, Any, Any, Any], gym.utils.RecordConstructorArgs):
    """Score, flag and penalise every transition of ``env`` against ``invariants``.

    Args:
        env: Any Gymnasium env with the 5-tuple step API.
        invariants: :class:`~physlink_gym.invariants.Invariant` objects with unique names.
            Those that cannot apply to ``env`` are reported NOT_APPLICABLE (with a warning).
        on_hard: What a hard violation does besides ``valid=False``: ``"flag"`` nothing more,
            ``"truncate"``/``"terminate"`` end the episode, ``"raise"`` raises
            :class:`InvariantViolationError` (for debugging; it would stop a vector worker).
        soft_weight: Finite weight >= 0 of the soft penalty: ``reward − soft_weight × cost``.
        on_error: An invariant that raises or returns garbage (None, str, complex, < 0) is an
            ERROR: ``"record"`` counts it (first one warned), ``"disable"`` also switches the
            invariant off, ``"raise"`` raises :class:`InvariantError`. Residual is NaN then.
        info_key: Key of the per-step record in ``info``.
        hard_cost: Indicator cost of a hard violation (the safe-RL convention of constrained
            algorithms such as those of OmniSafe): each flagged step adds ``hard_cost`` to
            ``cost`` and ``info["cost"]``. 0 (the default) keeps hard violations out of the cost;
            the reward is never changed by it.

    A step after the end of an episode without ``reset()`` warns once and starts a new episode
    from the last observation. The previous observation is copied, not aliased. The transition
    dict handed to invariants is reused between steps: copy what you keep.
    """

    def __init__(self, env: gym.Env[Any, Any], invariants: Iterable[Invariant], *,
                 on_hard: str = "flag", soft_weight: float = 1.0, on_error: str = "record",
                 info_key: str = "physlink", hard_cost: float = 0.0) -> None:
        if isinstance(invariants, (Invariant, str)) or not isinstance(invariants, Iterable):
            raise ConfigurationError(got=f"invariants={invariants!r}",
                                     expected="a list of Invariant objects",
                                     fix="pass [invariants.finite(), ...]")
        invariants = [coerce_invariant(item) for item in invariants]
        if isinstance(env, str):  # an env id, made as SB3 makes one for its algorithms
            env = gym.make(env)
        elif not isinstance(env, gym.Env):
            raise ConfigurationError(
                got=f"env={env!r} ({type(env).__name__})",
                expected="a gymnasium.Env or a registered env id",
                fix='pass InvariantWrapper(gym.make("Pendulum-v1"), [...]) or the id '
                '"Pendulum-v1"; for a vector env use physlink_gym.vec.BatchedInvariantWrapper',
            )
        # The spec records JSON-able descriptions, so env.spec.to_json() works and the wrapper
        # pickles after env.spec was read; gym.make(spec) rebuilds built-in invariants by name.
        gym.utils.RecordConstructorArgs.__init__(
            self, invariants=[_describe(inv) for inv in invariants], on_hard=on_hard,
            soft_weight=soft_weight, on_error=on_error, info_key=info_key, hard_cost=hard_cost)
        gym.Wrapper.__init__(self, env)
        self.on_hard, self.soft_weight, self.on_error, self.info_key = _options(
            on_hard, soft_weight, on_error, info_key, hard_cost)
        self.hard_cost = float(hard_cost)
        self._episode_key = info_key + "_episode"
        if type(env.unwrapped).__module__.startswith("safety_gymnasium"):
            raise _step_api_error(env, 6)
        try:
            self._dt = float(getattr(env.unwrapped, "dt", _NAN))
        except (TypeError, ValueError):
            self._dt = _NAN
        self._invariants: list[Invariant] = []
        self._slots: list[Slot] = []
        self._not_applicable: dict[str, Any] = {}
        self._prev_obs: Any = None
        self._ready = False  # False before the first reset and after the episode ended
        self._has_obs = False
        self._warned_no_reset = False
        self._episode = -1
        self._n_steps = self._n_invalid = self._n_episodes = 0
        self._episode_costs: list[float] = []
        self._ep_len = self._ep_invalid = self._ep_errors = 0
        self._ep_cost = 0.0
        self._rebuild()
        for inv in invariants:
            self.add_invariant(inv)

    # ------------------------------------------------------------------ configuration
    def add_invariant(self, invariant: Invariant) -> None:
        """Add an invariant (``register_invariant`` calls this); names must be unique."""
        if not isinstance(invariant, Invariant):
            raise ConfigurationError(got=f"{invariant!r}", expected="an Invariant",
                                     fix="use physlink_gym.invariants factories or Invariant(...)")
        if any(i.name == invariant.name for i in self._invariants):
            raise ConfigurationError(
                got=f"a second invariant named {invariant.name!r}",
                expected="unique invariant names within one wrapper",
                fix="pass name='...' to the factory (or to register_invariant) to rename it")
        self._invariants.append(invariant)
        self._bind(invariant, warn=True)
        self._rebuild()

    def _bind(self, inv: Invariant, warn: bool, slot: Slot | None = None) -> None:
        try:
            check = inv.bind(self.env)
        except NotApplicableError as exc:
            self._not_applicable[inv.name] = not_applicable_report(inv, exc)
            if warn:
                warnings.warn(f"physlink_gym: invariant {inv.name!r} is NOT_APPLICABLE to "
                              f"{type(self.env.unwrapped).__name__} and will be skipped: {exc}",
                              InvariantWarning, stacklevel=4)
            return
        if slot is None:
            slot = make_slot(inv)
            self._slots.append(slot)
        slot.attach(check)
        if self._has_obs and slot.on_reset is not None:
            self._hook(slot, slot.on_reset, self._prev_obs)

    def _rebuild(self) -> None:
        # Everything the per-step path needs, looked up once.
        self._hot = [(s.name, s.check, s.tol, s.hard, s, s.buf.append) for s in self._slots]
        self._no_violation = {s.name: False for s in self._slots}
        self._before = [s for s in self._slots if s.before_step is not None]
        self._has_soft = any(not s.hard for s in self._slots)
        self._transition: dict[str, Any] = {"dt": self._dt, "env": self.env.unwrapped,
                                            "cache": {}}

    @property
    def invariants(self) -> list[Invariant]:
        """The invariants of this wrapper, in the order they were added (a copy)."""
        return list(self._invariants)

    @property
    def not_applicable(self) -> dict[str, str]:
        """``{name: reason}`` for the invariants that do not apply to this env."""
        return {k: str(r.not_applicable) for k, r in self._not_applicable.items()}

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None,
              ) -> tuple[Any, dict[str, Any]]:
        """Reset the env and re-baseline every invariant (``on_reset`` hooks run here)."""
        obs, info = self.env.reset(seed=seed, options=options)
        if self._ready and self._ep_len:
            self._end_episode()
        self._start_episode(obs)
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env, check the transition, then flag, penalise or end the episode."""
        if not self._ready:
            self._not_ready()
        t = self._transition
        if t["cache"]:
            t["cache"] = {}
        if self._before:
            for s in self._before:
                if not s.state:
                    self._hook(s, s.before_step, action)
        try:
            result = self.env.step(action)
        except (TypeError, ValueError):
            if np.asarray(action).dtype.kind not in "biuf":  # not a number: the caller's error
                raise _bad_action(self.env, action) from None
            raise
        try:
            obs, reward, terminated, truncated, info = result
        except (TypeError, ValueError):
            raise _step_api_error(self.env, len(result) if hasattr(result, "__len__") else 1
                                  ) from None
        raw = _reward(self.env, reward)
        if not isinstance(info, dict):
            raise _garbage(self.env, "info", info, "a dict")
        t["obs"] = self._prev_obs
        t["action"] = action
        t["reward"] = reward
        t["next_obs"] = obs
        t["terminated"] = terminated
        t["truncated"] = truncated
        t["info"] = info
        t["step"] = self._ep_len
        info[self.info_key] = record = self._check(t, raw)
        if self._has_soft:
            reward = raw - self.soft_weight * record["cost"]  # the soft penalty only
        if self.hard_cost and not record["valid"]:
            record["cost"] += self.hard_cost
        cost = record["cost"]
        info["cost"] = cost if "cost" not in info else cost + _env_cost(self.env, info["cost"])
        if not record["valid"]:
            terminated, truncated = self._on_invalid(record, terminated, truncated)
        self._ep_len += 1
        self._ep_cost += cost
        if terminated or truncated:
            info[self._episode_key] = self._end_episode()
        self._prev_obs = obs.copy() if type(obs) is np.ndarray else copy.deepcopy(obs)
        return obs, reward, terminated, truncated, info

    # ------------------------------------------------------------------ per-step internals
    def _check(self, t: dict[str, Any], raw_reward: float) -> dict[str, Any]:
        residuals: dict[str, float] = {}
        violated = self._no_violation.copy()
        cost = 0.0
        valid = True
        errors = 0
        for name, check, tol, hard, s, append in self._hot:
            if s.state:
                residuals[name] = _NAN
                if s.state == SKIP:  # its before_step hook failed on this step
                    s.state = ACTIVE
                    errors += 1
                continue
            try:
                r = check(t)
                if type(r) is not float or not r >= 0.0:
                    r = to_residual(r)
            except BaseException as exc:  # SystemExit too: it must not kill a vector worker
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self._error(s, exc)
                residuals[name] = _NAN
                errors += 1
                if valid and not _finite_transition(t):  # it failed on a NaN: never valid
                    valid = False
                continue
            residuals[name] = r
            append(r)
            if r > tol or r != r:
                violated[name] = True
                excess = s.violation(r, self._episode, t["step"])
                if hard or excess is None:
                    valid = False
                else:
                    cost += excess
        self._n_steps += 1
        if not self._n_steps % _FLUSH_EVERY:
            self._flush()
        if errors:
            self._ep_errors += errors
        return {"valid": valid, "cost": cost, "residuals": residuals, "violated": violated,
                "errors": errors, "raw_reward": raw_reward}

    def _on_invalid(self, record: dict[str, Any], terminated: bool, truncated: bool,
                    ) -> tuple[bool, bool]:
        self._n_invalid += 1
        self._ep_invalid += 1
        if self.on_hard == "truncate":
            return terminated, True
        if self.on_hard == "terminate":
            return True, truncated
        if self.on_hard == "raise":
            tol = {s.name: s.tol for s in self._slots}
            bad = [f"{k} residual={record['residuals'][k]!r} > tolerance={tol[k]!r}"
                   for k, v in record["violated"].items() if v]
            raise InvariantViolationError(
                got=f"a hard violation at episode {self._episode}, step {self._ep_len}: "
                + ", ".join(bad),
                expected="every hard invariant within its tolerance",
                fix="inspect the transition, or use on_hard='flag' to keep running")
        return terminated, truncated

    def _hook(self, s: Slot, hook: Any, arg: Any) -> None:
        try:
            hook(self.env.unwrapped, arg)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._error(s, exc)
            if s.state == ACTIVE:
                s.state = SKIP

    def _error(self, s: Slot, exc: BaseException) -> None:
        if self.on_error == "raise":
            error = InvariantError(
                got=f"invariant {s.name!r} failed: {type(exc).__name__}: {exc}",
                expected="a residual float >= 0 from every invariant",
                fix="fix the invariant, or pass on_error='record' / 'disable'")
            report_in_worker(error)  # a SubprocVecEnv parent would see only a broken pipe
            raise error from exc
        if s.error(exc, disable=self.on_error == "disable"):
            warnings.warn(f"physlink_gym: invariant {s.name!r} failed ({s.rep.last_error}); "
                          f"counted as ERROR (on_error={self.on_error!r})",
                          InvariantWarning, stacklevel=4)

    def _not_ready(self) -> None:
        if not self._has_obs:
            raise ResetNeededError(got="step() before reset()", expected="reset() first",
                                   fix="call env.reset(seed=...) before env.step(action)")
        if not self._warned_no_reset:
            self._warned_no_reset = True
            warnings.warn("physlink_gym: step() after the episode ended without reset(); "
                          "checking goes on as a new episode from the last observation",
                          InvariantWarning, stacklevel=3)
        self._start_episode(self._prev_obs)

    def _start_episode(self, obs: Any) -> None:
        self._episode += 1
        self._prev_obs = obs.copy() if type(obs) is np.ndarray else copy.deepcopy(obs)
        self._has_obs = self._ready = True
        self._ep_len = self._ep_invalid = self._ep_errors = 0
        self._ep_cost = 0.0
        for s in self._slots:
            s.start_episode()
            if s.on_reset is not None and s.state != DISABLED:
                self._hook(s, s.on_reset, obs)

    def _end_episode(self) -> dict[str, Any]:
        self._ready = False
        self._n_episodes += 1
        self._episode_costs.append(self._ep_cost)
        del self._episode_costs[:-MAX_KEPT_EPISODES]
        violations = {s.name: s.end_episode() for s in self._slots}
        return {"length": self._ep_len, "cost": self._ep_cost, "invalid_steps": self._ep_invalid,
                "errors": self._ep_errors, "violations": violations}

    def _flush(self) -> None:
        for s in self._slots:
            s.flush()

    # ------------------------------------------------------------------ reporting, pickling
    def compliance_report(self) -> ComplianceReport:
        """A snapshot :class:`~physlink_gym.ComplianceReport` of everything checked so far."""
        self._flush()
        reports = {s.name: s.snapshot() for s in self._slots}
        reports.update({k: copy.deepcopy(v) for k, v in self._not_applicable.items()})
        return ComplianceReport(
            invariants=[reports[i.name] for i in self._invariants], steps=self._n_steps,
            invalid_steps=self._n_invalid, episodes=self._n_episodes,
            episode_costs=list(self._episode_costs))

    def __getstate__(self) -> dict[str, Any]:
        self._flush()
        state = self.__dict__.copy()
        state.pop("_cached_spec", None)  # rebuilt on access
        state["_invariants"] = cloudpickle.dumps(self._invariants)
        state["_saved_kwargs"] = cloudpickle.dumps(self._saved_kwargs)
        for key in ("_transition", "_before", "_hot"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["_invariants"] = cloudpickle.loads(state["_invariants"])
        state["_saved_kwargs"] = cloudpickle.loads(state["_saved_kwargs"])
        self.__dict__.update(state)
        slots = {s.name: s for s in self._slots}
        self._rebuild()  # _bind may run on_reset hooks, which need the transition dict
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InvariantWarning)
            for inv in self._invariants:
                if inv.name in slots:
                    slots[inv.name].inv = inv
                    self._bind(inv, warn=False, slot=slots[inv.name])
        self._rebuild()


def _describe(inv: Invariant) -> dict[str, Any]:
    return {"name": inv.name, "tolerance": float(inv.tolerance), "mode": inv.mode}


def _finite_transition(t: dict[str, Any]) -> bool:
    """Whether the numbers of a transition (obs, next_obs, action, reward) are all finite."""
    for key in ("obs", "next_obs", "action", "reward"):
        try:
            if not np.isfinite(np.asarray(t.get(key), dtype=np.float64)).all():
                return False
        except (TypeError, ValueError):
            continue  # not numeric (e.g. a dict observation): nothing to say
    return True


def _garbage(env: Any, field: str, value: Any, expected: str) -> StepAPIError:
    return StepAPIError(
        got=f"{type(env.unwrapped).__name__}.step() returning {field}={str(value)[:80]!r} "
        f"({type(value).__name__})",
        expected=f"{field} as {expected}",
        fix=f"fix {type(env.unwrapped).__name__}.step() (Gymnasium's API: obs, reward as a "
        "float, terminated, truncated, info as a dict)",
    )


def _reward(env: Any, reward: Any) -> float:
    """The env's reward as a float, or a StepAPIError naming the env (an array, None, a str)."""
    if not isinstance(reward, (int, float, np.integer, np.floating, np.bool_)) and not (
        isinstance(reward, np.ndarray) and reward.ndim == 0
    ):
        raise _garbage(env, "reward", reward, "a float (a scalar, not an array or None)")
    return float(reward)


def _env_cost(env: Any, cost: Any) -> float:
    try:
        return float(cost)
    except (TypeError, ValueError):
        raise _garbage(env, 'info["cost"]', cost, "a number (the safety-gymnasium cost)"
                       ) from None


def _bad_action(env: Any, action: Any) -> ValidationError:
    return ValidationError(
        got=f"action {action!r} ({type(action).__name__})",
        expected=f"an action of {env.action_space} (numbers)",
        fix="pass env.action_space.sample() or your policy's numeric action",
    )


def _step_api_error(env: Any, n: int) -> StepAPIError:
    return StepAPIError(
        got=f"{type(env.unwrapped).__name__}.step() returning {n} values (safety-gymnasium style "
        "(obs, reward, cost, terminated, truncated, info)?)",
        expected="Gymnasium's 5-tuple (obs, reward, terminated, truncated, info)",
        fix="convert the env first, e.g. safety_gymnasium.wrappers.SafetyGymnasium2Gymnasium "
        "(it moves the cost into info['cost']), then wrap it with InvariantWrapper")
