"""Data-parallel DreamerV3: updates per second with 1 and 2 ranks (torchrun, gloo on CPU).

    python scripts/bench_ddp.py                   # small preset, Pendulum-v1, 1 and 2 ranks
    python scripts/bench_ddp.py --ranks 1 2 4 --updates 40

Each configuration is launched with ``torchrun --standalone --nproc_per_node R`` and one torch
thread per rank. After ``learning_starts`` env steps, each rank times ``--updates`` updates
(wall and CPU of its own process) inside ``learn()``; the gradient ``all_reduce`` is part of
every update. Reported: seconds per update, updates per second (all ranks step together) and
replayed samples per second (batch x length x ranks), with the load average. Writes
``<out>.md`` and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def worker(out: Path, updates: int, preset: str) -> None:
    import gymnasium as gym
    import torch
    from stable_baselines3.common.vec_env import DummyVecEnv

    from physlink_gym import DreamerV3
    from physlink_gym.agents.dreamerv3 import distributed

    torch.set_num_threads(1)
    venv = DummyVecEnv([lambda: gym.make("Pendulum-v1")])
    model = DreamerV3("MlpPolicy", venv, preset=preset, learning_starts=256, seed=0)
    per_update = model.config.batch_size * model.config.batch_length / model.config.train_ratio
    model.learn(256 + int(2 * per_update))  # a couple of updates: warm
    warm = model._n_updates
    wall, cpu = time.perf_counter(), time.process_time()
    model.learn(int(updates * per_update), reset_num_timesteps=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = model._n_updates - warm
    row = {"rank": distributed.rank(), "world": distributed.world_size(), "updates": n,
           "wall_s": wall, "cpu_s": cpu,
           "samples_per_update": model.config.batch_size * model.config.batch_length}
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--out", default="docs/benchmarks/ddp")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker), args.updates, args.preset)
        return
    rows = []
    load_before = os.getloadavg()
    for r in args.ranks:
        tmp = Path(f"/tmp/bench_ddp_{r}")
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={r}", __file__, "--worker", str(tmp),
                        "--updates", str(args.updates), "--preset", args.preset],
                       env=env, check=True)
        ranks = [json.loads((tmp / f"rank{k}.json").read_text()) for k in range(r)]
        wall = max(x["wall_s"] for x in ranks)
        n = ranks[0]["updates"]
        rows.append({"ranks": r, "updates": n, "s_per_update": wall / n,
                     "cpu_s_per_update": sum(x["cpu_s"] for x in ranks) / r / n,
                     "updates_per_s": n / wall,
                     "samples_per_s": n * ranks[0]["samples_per_update"] * r / wall})
        print(rows[-1], flush=True)
    load = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"preset": args.preset, "rows": rows, "load_before": load_before, "load_after": load,
         "cpus": os.cpu_count()}, indent=2))
    base = rows[0]["samples_per_s"]
    lines = [
        "# Data-parallel DreamerV3: updates per second by number of ranks",
        "",
        f"`python scripts/bench_ddp.py --ranks {' '.join(map(str, args.ranks))} --updates "
        f"{args.updates} --preset {args.preset}`: Pendulum-v1, torchrun with gloo on this "
        f"{os.cpu_count()}-core CPU machine, one torch thread per rank; load average "
        f"{load_before[0]:.2f} before, {load[0]:.2f} after.",
        "",
        "| ranks | s / update (wall) | CPU s / update per rank | updates/s | replayed samples/s "
        "| vs 1 rank |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['ranks']} | {row['s_per_update']:.3f} | "
                     f"{row['cpu_s_per_update']:.3f} | {row['updates_per_s']:.2f} | "
                     f"{row['samples_per_s']:.0f} | {row['samples_per_s'] / base:.2f}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
