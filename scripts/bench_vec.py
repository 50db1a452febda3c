"""Invariant checks on vector envs: one batched pass against one InvariantWrapper per sub-env.

    python scripts/bench_vec.py                              # 1, 16 and 256 envs
    python scripts/bench_vec.py --envs 1 16 --steps 300      # quicker

For each number of sub-envs, Pendulum-v1 runs in a ``SyncVectorEnv`` under the same random
actions, checked with the transition-only built-ins (``finite``, ``obs_bounds``,
``action_bounds``, ``pendulum_energy``) either by :class:`BatchedInvariantWrapper` around the
vector env or by an :class:`InvariantWrapper` inside each sub-env. The cost of checking is
measured directly: the time inside the checking layer minus the time of the steps it wraps
(wall and CPU, ``time.perf_counter`` / ``time.process_time``), per env-step. Writes
``<out>.md`` and ``<out>.json`` with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from physlink_gym import InvariantWrapper, invariants
from physlink_gym.vec import BatchedInvariantWrapper


def _checks() -> list[Any]:
    return [invariants.finite(), invariants.obs_bounds(), invariants.action_bounds(),
            invariants.pendulum_energy()]


class Clock:
    """Accumulated wall and CPU seconds of the calls it times."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def time(self, fn: Any, *args: Any) -> Any:
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        self.wall += time.perf_counter() - w
        self.cpu += time.process_time() - c
        return out


class TimedEnv(gym.Wrapper):
    def __init__(self, env: gym.Env, clock: Clock) -> None:
        super().__init__(env)
        self.clock = clock

    def step(self, action: Any) -> Any:
        return self.clock.time(self.env.step, action)


class TimedVec(gym.vector.VectorWrapper):
    def __init__(self, env: Any, clock: Clock) -> None:
        super().__init__(env)
        self.clock = clock

    def step(self, actions: Any) -> Any:
        return self.clock.time(self.env.step, actions)


def _per_env(n: int, steps: int, seed: int) -> tuple[float, float]:
    outer, inner = Clock(), Clock()

    def make() -> gym.Env:
        checked = InvariantWrapper(TimedEnv(gym.make("Pendulum-v1"), inner), _checks())
        return TimedEnv(checked, outer)

    venv = gym.vector.SyncVectorEnv([make for _ in range(n)])
    _drive(venv, n, steps, seed)
    return outer.wall - inner.wall, outer.cpu - inner.cpu


def _batched(n: int, steps: int, seed: int) -> tuple[float, float]:
    outer, inner = Clock(), Clock()
    base = gym.vector.SyncVectorEnv([lambda: gym.make("Pendulum-v1") for _ in range(n)])
    venv = TimedVec(BatchedInvariantWrapper(TimedVec(base, inner), _checks()), outer)
    _drive(venv, n, steps, seed)
    return outer.wall - inner.wall, outer.cpu - inner.cpu


def _drive(venv: Any, n: int, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-2, 2, size=(steps, n, 1)).astype(np.float32)
    venv.reset(seed=seed)
    for t in range(steps):
        venv.step(actions[t])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--env-steps", type=int, default=100_000,
                        help="env-steps per measurement (vector steps = this / envs)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many")
    parser.add_argument("--out", default="docs/benchmarks/vec")
    args = parser.parse_args()
    load = os.getloadavg()
    rows = []
    for n in args.envs:
        steps = max(50, args.env_steps // n)
        per_env = min((_per_env(n, steps, r) for r in range(args.repeats)), key=lambda x: x[0])
        batched = min((_batched(n, steps, r) for r in range(args.repeats)), key=lambda x: x[0])
        total = n * steps
        row = {"envs": n, "env_steps": total,
               "per_env_us": 1e6 * per_env[0] / total, "per_env_cpu_us": 1e6 * per_env[1] / total,
               "batched_us": 1e6 * batched[0] / total, "batched_cpu_us": 1e6 * batched[1] / total}
        row["ratio"] = row["per_env_us"] / row["batched_us"]
        rows.append(row)
        print(row, flush=True)
    lines = [
        "# Invariant checks on vector envs", "",
        "`python scripts/bench_vec.py`: Pendulum-v1 in a `SyncVectorEnv`, checked with "
        "`finite`, `obs_bounds`, `action_bounds`, `pendulum_energy`; the time inside the "
        "checking layer minus the steps it wraps, per env-step, best of "
        f"{args.repeats}. Load average {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after.",
        "",
        "| sub-envs | InvariantWrapper per sub-env, µs (CPU) | BatchedInvariantWrapper, µs (CPU)"
        " | ratio |",
        "|---:|---:|---:|---:|",
        *[f"| {r['envs']} | {r['per_env_us']:.2f} ({r['per_env_cpu_us']:.2f}) | "
          f"{r['batched_us']:.2f} ({r['batched_cpu_us']:.2f}) | {r['ratio']:.1f}x |"
          for r in rows],
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "load": [load, os.getloadavg()]},
                                                   indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
