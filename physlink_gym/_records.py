"""Per-invariant bookkeeping of :class:`~physlink_gym.InvariantWrapper` and record readers.

A :class:`Slot` holds one bound invariant and accumulates its :class:`InvariantReport` cheaply:
residuals go to a plain list and are folded into counts, maximum and histogram in batches
(:meth:`Slot.flush`); violations (rare) go straight to a bounded min-heap of the largest ones.
:func:`valid_mask` reads the per-step records back (re-exported by :mod:`physlink_gym.wrappers`).
"""

from __future__ import annotations

import copy
import heapq
import math
from typing import Any

import cloudpickle
import numpy as np

from physlink_gym.errors import ValidationError
from physlink_gym.invariants.core import Invariant
from physlink_gym.report import (
    MAX_KEPT_EPISODES,
    MAX_KEPT_VIOLATIONS,
    InvariantReport,
    histogram_add,
)

__all__ = [
    "ACTIVE", "DISABLED", "RECORD_KEYS", "SKIP", "Slot", "find_record", "make_slot",
    "not_applicable_report", "record_key", "valid_mask",
]

ACTIVE, SKIP, DISABLED = 0, 1, 2  # SKIP: its before_step hook failed, skip one check
_INF = math.inf


def not_applicable_report(inv: Invariant, reason: Exception | str) -> InvariantReport:
    """The report of an invariant that cannot apply (its binder raised NotApplicableError)."""
    return InvariantReport(inv.name, inv.mode, float(inv.tolerance), not_applicable=str(reason),
                           hint=inv.hint)


def make_slot(inv: Invariant) -> Slot:
    """A fresh slot for ``inv`` (attach its bound check with :meth:`Slot.attach`)."""
    return Slot(inv)


class Slot:
    """One bound invariant plus its running statistics."""

    __slots__ = ("before_step", "buf", "check", "ep_cost", "ep_violations", "hard", "heap",
                 "inv", "name", "on_reset", "rep", "state", "tol")

    def __init__(self, inv: Invariant) -> None:
        self.inv = inv
        self.name = inv.name
        self.tol = float(inv.tolerance)
        self.hard = inv.mode == "hard"
        self.state = ACTIVE
        self.buf: list[float] = []
        self.heap: list[tuple[float, int, int, float]] = []
        self.rep = InvariantReport(inv.name, inv.mode, self.tol, hint=inv.hint)
        self.ep_cost = 0.0
        self.ep_violations = 0
        self.check: Any = None
        self.on_reset: Any = None
        self.before_step: Any = None

    def attach(self, check: Any) -> None:
        """Use ``check`` (from ``Invariant.bind``); look its optional hooks up once."""
        self.check = check
        self.on_reset = getattr(check, "on_reset", None)
        self.before_step = getattr(check, "before_step", None)

    def violation(self, r: float, episode: int, step: int) -> float | None:
        """Count a violation; return its excess ``r − tol`` (None when ``r`` is not finite)."""
        self.rep.violations += 1
        self.ep_violations += 1
        item = (r if r == r else _INF, episode, step, r)
        if len(self.heap) < MAX_KEPT_VIOLATIONS:
            heapq.heappush(self.heap, item)
        elif item[0] > self.heap[0][0]:
            heapq.heapreplace(self.heap, item)
        if r == _INF or r != r:
            return None
        excess = r - self.tol
        self.ep_cost += excess
        return excess

    def error(self, exc: BaseException, disable: bool) -> bool:
        """Count an error; return True for the first one (so the wrapper warns once)."""
        self.rep.errors += 1
        self.rep.last_error = f"{type(exc).__name__}: {exc}"[:300]
        if disable:
            self.state = DISABLED
            self.rep.disabled = True
        return self.rep.errors == 1

    def start_episode(self) -> None:
        """Zero the per-episode counters."""
        self.ep_cost = 0.0
        self.ep_violations = 0

    def end_episode(self) -> int:
        """Store this episode's cost; return its number of violations."""
        costs = self.rep.episode_costs
        costs.append(self.ep_cost)
        if len(costs) > MAX_KEPT_EPISODES:
            del costs[: len(costs) - MAX_KEPT_EPISODES]
        return self.ep_violations

    def add_batch(self, r: np.ndarray, episode: np.ndarray, step: np.ndarray) -> np.ndarray:
        """Count the residuals ``r`` of many transitions at once; return their violation mask.

        The same bookkeeping as one :meth:`violation` per violating transition (the kept
        largest ones, the count), without a Python call per transition; per-episode costs are
        the caller's (it knows the episode boundaries).
        """
        self.flush()
        self._fold(r)
        bad = ~(r <= self.tol)  # NaN and inf violate
        index = np.flatnonzero(bad)
        self.rep.violations += int(index.size)
        if index.size:
            key = np.where(np.isnan(r[index]), _INF, r[index])
            order = np.argsort(-key, kind="stable")[:MAX_KEPT_VIOLATIONS]
            for k, i in zip(key[order].tolist(), index[order].tolist(), strict=True):
                item = (k, int(episode[i]), int(step[i]), float(r[i]))
                if len(self.heap) < MAX_KEPT_VIOLATIONS:
                    heapq.heappush(self.heap, item)
                elif item[0] > self.heap[0][0]:
                    heapq.heapreplace(self.heap, item)
        return bad

    def flush(self) -> None:
        """Fold the buffered residuals into the report's counts, maximum and histogram."""
        if not self.buf:
            return
        arr = np.asarray(self.buf, dtype=np.float64)
        self.buf.clear()
        self._fold(arr)

    def _fold(self, arr: np.ndarray) -> None:
        rep = self.rep
        rep.checked += arr.size
        finite = np.isfinite(arr)
        n_finite = int(np.count_nonzero(finite))
        if n_finite < arr.size:
            rep.nonfinite += arr.size - n_finite
            rep.max_residual = _INF
            arr = arr[finite]
        if arr.size:
            rep.max_residual = max(rep.max_residual, float(arr.max()))
            rep.residual_sum += float(arr.sum())
            positive = arr[arr > 0]
            rep.zeros += arr.size - positive.size
            if positive.size:
                histogram_add(rep.histogram, positive)

    def snapshot(self) -> InvariantReport:
        """A copy of the report with the kept violations, largest first."""
        self.flush()
        rep = copy.deepcopy(self.rep)
        rep.worst = [[r, ep, st, 0] for _, ep, st, r in sorted(self.heap, reverse=True)]
        return rep

    def __getstate__(self) -> dict[str, Any]:
        state = {k: getattr(self, k) for k in self.__slots__}
        state.update(check=None, on_reset=None, before_step=None,
                     inv=cloudpickle.dumps(self.inv))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["inv"] = cloudpickle.loads(state["inv"])
        for k, v in state.items():
            setattr(self, k, v)


RECORD_KEYS = frozenset({"valid", "cost", "residuals", "violated"})


def record_key(info: Any) -> str | None:
    """The key under which :class:`~physlink_gym.InvariantWrapper` put its record in ``info``.

    ``"physlink"`` unless the wrapper was given another ``info_key``: then the key whose value
    is a dict with the record's fields (``valid``, ``cost``, ``residuals``, ``violated``).
    Every reader of the record (``valid_mask``, DreamerV3's replay and statistics,
    ``record_trajectories``) finds it through here, so a custom ``info_key`` is never ignored.

    Example:
        >>> record_key({"pl": {"valid": False, "cost": 0.0, "residuals": {}, "violated": {}}})
        'pl'
        >>> record_key({"cost": 1.0}) is None
        True
    """
    if not isinstance(info, dict):
        return None
    record = info.get("physlink")
    if isinstance(record, dict) and "valid" in record:
        return "physlink"
    for key, value in info.items():
        if isinstance(value, dict) and RECORD_KEYS <= value.keys():
            return str(key)
    return None


def find_record(info: Any, info_key: str | None = None) -> dict[str, Any] | None:
    """The wrapper's per-step record in ``info`` (``info_key``, or found by :func:`record_key`)."""
    key = record_key(info) if info_key is None else info_key
    record = info.get(key) if key is not None and isinstance(info, dict) else None
    return record if isinstance(record, dict) else None


def valid_mask(infos: Any, *, info_key: str | None = None, missing: bool = False,
               num_envs: int | None = None) -> np.ndarray:
    """Per-env ``valid`` flags from step infos, as a bool array of shape ``(n_envs,)``.

    Accepts a single env's info dict (shape ``(1,)``), an SB3 VecEnv info list, or a Gymnasium
    vector info dict (batched arrays with ``_key`` masks); for the latter, a sub-env whose
    ``final_info`` is set (autoreset mode SAME_STEP, or Gymnasium < 1.0) is read from it.
    Envs without a record (e.g. the reset step of NEXT_STEP autoreset) get ``missing``. Pass
    ``num_envs`` for Gymnasium vector infos: an all-reset step gives an empty info dict. The
    record is found under ``info_key``, or by :func:`record_key` when it is None (a wrapper
    with a custom ``info_key``).

    Example:
        >>> valid_mask([{"physlink": {"valid": True}}, {"physlink": {"valid": False}}, {}])
        array([ True, False, False])
        >>> valid_mask({}, num_envs=2)
        array([False, False])
    """
    if isinstance(infos, (list, tuple)):
        return np.array([_single_valid(i, info_key, missing) for i in infos], dtype=bool)
    if not isinstance(infos, dict):
        raise ValidationError(got=f"infos of type {type(infos).__name__}",
                              expected="an info dict or a list of info dicts",
                              fix="pass the info returned by env.step / venv.step")
    if info_key is None:
        info_key = record_key(infos) or record_key(_first_final(infos)) or "physlink"
    record = infos.get(info_key)
    single = isinstance(record, dict) and isinstance(record.get("valid"), (bool, np.bool_))
    masks = [len(v) for k, v in infos.items() if k.startswith("_") and isinstance(v, np.ndarray)]
    if single or (num_envs is None and not masks):
        return np.array([_single_valid(infos, info_key, missing)], dtype=bool)
    return _vector_valid(infos, info_key, missing, num_envs or masks[0])


def _vector_valid(infos: dict[str, Any], info_key: str, missing: bool, n: int) -> np.ndarray:
    mask = np.full(n, missing, dtype=bool)
    record = infos.get(info_key)
    if record is not None:
        present = infos.get("_" + info_key, np.ones(len(mask), bool))
        mask[present] = np.asarray(record["valid"], dtype=bool)[present]
    final, has_final = infos.get("final_info"), infos.get("_final_info")
    if final is None or has_final is None:
        return mask
    for i in np.flatnonzero(has_final):
        if isinstance(final, dict):  # Gymnasium >= 1.0: a batched info dict
            rec = final.get(info_key)
            ok = rec is not None and final.get("_" + info_key, has_final)[i]
            mask[i] = bool(rec["valid"][i]) if rec is not None and ok else missing
        else:  # Gymnasium < 1.0: an object array of single-env info dicts
            mask[i] = _single_valid(final[i] or {}, info_key, missing)
    return mask


def _first_final(infos: dict[str, Any]) -> Any:
    final = infos.get("final_info")
    if isinstance(final, dict):
        return final
    if isinstance(final, (list, tuple, np.ndarray)):
        return next((f for f in final if isinstance(f, dict)), None)
    return None


def _single_valid(info: Any, info_key: str | None, missing: bool) -> bool:
    record = find_record(info, info_key)
    return bool(record["valid"]) if record is not None and "valid" in record else missing
