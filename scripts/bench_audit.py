"""Offline audit benchmark: 1M Pendulum-v1 transitions, vectorised against transition by transition.

Records ``--episodes`` random-action episodes of Pendulum-v1 (with a few injected faults),
repeats them to ``--transitions`` entries, then audits the same data twice in one run with the
transition-only built-ins (``finite``, ``obs_bounds``, ``action_bounds``, ``pendulum_energy``):
once as shipped (their ``batch`` methods, vectorised) and once through the per-transition path
that user callables take. Both must give the same flags; the report gives wall and CPU seconds,
transitions per second, the ratio and the load average. Writes ``<out>.md`` and ``<out>.json``.

    python scripts/bench_audit.py                      # 1M transitions
    python scripts/bench_audit.py --transitions 200000 --out /tmp/audit
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from physlink_gym import audit, invariants
from physlink_gym.data import Trajectories, record_trajectories
from physlink_gym.invariants import Invariant


def _data(episodes: int, transitions: int, seed: int) -> Trajectories:
    env = gym.make("Pendulum-v1")
    one = record_trajectories(env, n_episodes=episodes, seed=seed)
    rng = np.random.default_rng(seed)
    bad = rng.choice(len(one), size=len(one) // 100, replace=False)
    one.obs[bad[::2], 2] = np.nan  # a dropped reading
    one.obs[bad[1::2], 2] = 9.0  # a sensor past the |ω| <= 8 range
    parts = [one] * max(1, -(-transitions // len(one)))
    data = Trajectories.concatenate(parts)
    return data


def _looped(inv: Invariant) -> Invariant:
    """The same check without its ``batch`` method: audit calls it once per transition."""

    class NoBatch:
        def __init__(self, check: Any) -> None:
            self.check = check
            if hasattr(check, "on_reset"):
                self.on_reset = check.on_reset

        def __call__(self, t: Any) -> float:
            return float(self.check(t))

    return Invariant(inv.name, binder=lambda env: NoBatch(inv.bind(env)),
                     tolerance=inv.tolerance, mode=inv.mode)


def _timed(data: Trajectories, invs: list[Invariant]) -> tuple[Any, float, float]:
    env = gym.make("Pendulum-v1")
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = audit(data, invs, env=env)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/benchmarks/audit")
    args = parser.parse_args()
    data = _data(args.episodes, args.transitions, args.seed)
    shipped = [invariants.finite(), invariants.obs_bounds(), invariants.action_bounds(),
               invariants.pendulum_energy()]
    load_before = os.getloadavg()
    (fast, fast_report), fast_wall, fast_cpu = _timed(data, shipped)
    (slow, slow_report), slow_wall, slow_cpu = _timed(data, [_looped(i) for i in shipped])
    load_after = os.getloadavg()
    same = bool(np.array_equal(fast.valid, slow.valid)) and all(
        fast_report[n].violations == slow_report[n].violations for n in fast_report.statuses)
    n = fast_report.steps
    rows = [("vectorised (batch)", fast_wall, fast_cpu), ("per transition", slow_wall, slow_cpu)]
    result = {
        "transitions": n, "entries": len(data), "flagged": int((~fast.valid).sum()),
        "same_flags": same, "load_average_before": load_before, "load_average_after": load_after,
        "rows": [{"path": p, "wall_s": w, "cpu_s": c, "transitions_per_s": n / w}
                 for p, w, c in rows],
        "speedup_wall": slow_wall / fast_wall, "speedup_cpu": slow_cpu / fast_cpu,
        "summary": fast_report.summary(),
    }  # fmt: skip
    lines = [
        "# Offline audit: 1M transitions",
        "",
        "`python scripts/bench_audit.py` (Pendulum-v1 random-action episodes with injected NaN "
        "and out-of-range readings, repeated; invariants `finite`, `obs_bounds`, "
        "`action_bounds`, `pendulum_energy`; one process, numpy's default threads).",
        "",
        f"{n:,} transitions, {result['flagged']:,} entries flagged; both paths give the same "
        f"flags: **{same}**. Load average {load_before[0]:.2f} before, {load_after[0]:.2f} "
        "after.",
        "",
        "| path | wall s | CPU s | transitions / s |",
        "|---|---:|---:|---:|",
        *[f"| {p} | {w:.2f} | {c:.2f} | {n / w:,.0f} |" for p, w, c in rows],
        "",
        f"Vectorised is **{result['speedup_wall']:.0f}x** faster in wall time "
        f"({result['speedup_cpu']:.0f}x in CPU time). User callables take the per-transition "
        "path; give a bound check a `batch(transitions)` method to take the fast one.",
        "",
        "```",
        fast_report.summary(),
        "```",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
