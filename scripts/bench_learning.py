"""Learning benchmark: DreamerV3 against SB3 SAC on Pendulum-v1, side by side in one run.

Both agents are evaluated on 10 deterministic episodes every ``--eval-every`` env steps, for each
seed. SAC uses SB3's default hyperparameters. The script prints a table and writes
``docs/benchmarks/learning.md`` and ``docs/benchmarks/learning.png``.

    python scripts/bench_learning.py --steps 5000 --seeds 0 1 2
    python scripts/bench_learning.py --steps 2000 --seeds 0 --preset debug   # quick look

``--jobs DreamerV3:1 SAC:0 ...`` runs only those (algo, seed) pairs, and ``--include
earlier/learning.json`` adds the results of an earlier run with the same settings to the
report (it refuses one with other settings), so the seeds of one benchmark can be spread over
two invocations when the cores are busy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from physlink_gym import DreamerV3

ENV_ID = "Pendulum-v1"
TARGET = -200.0


class EvalEvery(BaseCallback):
    """Evaluate 10 deterministic episodes every ``every`` env steps; time the updates."""

    def __init__(self, every: int, seed: int) -> None:
        super().__init__()
        self.every = every
        self.eval_env = Monitor(gym.make(ENV_ID))
        self.eval_env.reset(seed=10_000 + seed)
        self.points: list[tuple[int, float, float]] = []
        self.start = time.perf_counter()
        self.eval_time = 0.0

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            t0 = time.perf_counter()
            mean, std = evaluate_policy(self.model, self.eval_env, n_eval_episodes=10,
                                        deterministic=True)
            self.eval_time += time.perf_counter() - t0
            self.points.append((self.num_timesteps, float(mean), float(std)))
            print(f"  {type(self.model).__name__:9s} step {self.num_timesteps:6d} "
                  f"return {mean:8.1f} ± {std:5.1f}", flush=True)
        return True


def run_one(args: tuple[str, int, dict]) -> dict:
    """Train one agent on one seed; returns its curve and timings."""
    algo, seed, opts = args
    torch.set_num_threads(opts["threads"])
    env = gym.make(ENV_ID)
    if algo == "DreamerV3":
        model = DreamerV3("MlpPolicy", env, preset=opts["preset"], seed=seed,
                          train_ratio=opts["train_ratio"], learning_starts=opts["learning_starts"],
                          policy_kwargs=opts["overrides"] or None, device="cpu")
    else:
        model = SAC("MlpPolicy", env, seed=seed, device="cpu")
    cb = EvalEvery(opts["eval_every"], seed)
    t0 = time.perf_counter()
    model.learn(opts["steps"], callback=cb)
    wall = time.perf_counter() - t0 - cb.eval_time
    n_updates = int(getattr(model, "_n_updates", 0))
    return {"algo": algo, "seed": seed, "curve": cb.points, "wall_s": wall,
            "n_updates": n_updates, "s_per_update": wall / max(n_updates, 1),
            "env_steps_per_s": opts["steps"] / wall}


def first_reaching(curve: list, target: float) -> int | None:
    """First evaluation step whose mean return is >= target."""
    return next((step for step, mean, _ in curve if mean >= target), None)


def write_report(results: list[dict], opts: dict, out: Path) -> None:
    """Markdown table + plot of the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"DreamerV3": "tab:blue", "SAC": "tab:orange"}
    for r in results:
        steps = [p[0] for p in r["curve"]]
        means = [p[1] for p in r["curve"]]
        ax.plot(steps, means, color=colors[r["algo"]], alpha=0.8,
                label=f"{r['algo']} seed {r['seed']}")
    ax.axhline(TARGET, color="gray", ls="--", lw=1, label=f"target {TARGET:.0f}")
    ax.set_xlabel("env steps")
    ax.set_ylabel("eval return (10 deterministic episodes)")
    ax.set_title(f"{ENV_ID}: DreamerV3 ({opts['preset']}) vs SB3 SAC")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    lines = [
        "# Learning: DreamerV3 vs SB3 SAC on Pendulum-v1", "",
        "Command: " + " then ".join(f"`python scripts/bench_learning.py {c}`"
                                    for c in opts["argv"].split(" && ")), "",
        f"DreamerV3 preset `{opts['preset']}`, train_ratio {opts['train_ratio']}, "
        f"learning_starts {opts['learning_starts']}, overrides {opts['overrides'] or 'none'}; "
        "SAC with SB3 defaults. Evaluation: 10 deterministic episodes every "
        f"{opts['eval_every']} env steps. CPU, {opts['threads']} torch thread(s) per run.", "",
        "| algo | seed | return at each eval | first step >= -200 | s/update | env steps/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        curve = ", ".join(f"{m:.0f}" for _, m, _ in r["curve"])
        lines.append(f"| {r['algo']} | {r['seed']} | {curve} | "
                     f"{first_reaching(r['curve'], TARGET)} | {r['s_per_update']:.4f} | "
                     f"{r['env_steps_per_s']:.1f} |")
    lines += ["", f"![curves]({out.with_suffix('.png').name})", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))


def main() -> None:
    """Parse arguments, run the agents (in parallel processes) and write the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--preset", default="1m")
    p.add_argument("--train-ratio", type=float, default=512)
    p.add_argument("--learning-starts", type=int, default=1024)
    p.add_argument("--override", action="append", default=[],
                   help="config override key=value (JSON value), repeatable")
    p.add_argument("--algos", nargs="+", default=["DreamerV3", "SAC"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="docs/benchmarks/learning")
    p.add_argument("--jobs", nargs="+", default=None, metavar="ALGO:SEED",
                   help="run only these pairs instead of every algo for every seed")
    p.add_argument("--include", action="append", default=[], metavar="JSON",
                   help="results of an earlier run with the same settings, to report with")
    a = p.parse_args()
    import sys

    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in a.override)}
    opts = {"steps": a.steps, "eval_every": a.eval_every, "preset": a.preset,
            "train_ratio": a.train_ratio, "learning_starts": a.learning_starts,
            "overrides": overrides, "threads": a.threads, "argv": " ".join(sys.argv[1:])}
    if a.jobs:
        pairs = [(j.split(":")[0], int(j.split(":")[1])) for j in a.jobs]
    else:
        pairs = [(algo, seed) for seed in a.seeds for algo in a.algos]
    jobs = [(algo, seed, opts) for algo, seed in pairs]
    ctx = mp.get_context("spawn")
    with ctx.Pool(a.workers) as pool:
        results = pool.map(run_one, jobs, chunksize=1)
    for r in results:
        r["opts"] = {k: v for k, v in opts.items() if k != "argv"}
        r["argv"] = opts["argv"]
    for path in a.include:
        for r in json.loads(Path(path).read_text()):
            if r.get("opts") != results[0]["opts"]:
                raise SystemExit(f"{path}: other settings ({r.get('opts')}); not merged")
            results.append(r)
    # the commands in the order they ran: included (earlier) runs first
    opts["argv"] = " && ".join(dict.fromkeys([r["argv"] for r in results[len(jobs):]]
                                             + [r["argv"] for r in results[:len(jobs)]]))
    results.sort(key=lambda r: (r["algo"], r["seed"]))
    write_report(results, opts, Path(a.out))
    for algo in sorted({r["algo"] for r in results}):
        rs = [r for r in results if r["algo"] == algo]
        reach = [first_reaching(r["curve"], TARGET) for r in rs]
        print(f"{algo}: first step >= {TARGET}: {reach}; "
              f"s/update {np.mean([r['s_per_update'] for r in rs]):.4f}; "
              f"env steps/s {np.mean([r['env_steps_per_s'] for r in rs]):.1f}")


if __name__ == "__main__":
    main()
