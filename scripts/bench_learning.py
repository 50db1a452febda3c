"""Learning benchmark: DreamerV3 (and SB3 SAC or PPO) on one env, side by side in one run.

Every agent is evaluated on 10 deterministic episodes every ``--eval-every`` env steps, for each
seed; the training wall clock (evaluations excluded) is recorded at each evaluation, so the
report gives both the env steps and the seconds to the target return, and the lowest return
after it was first reached (does it stay up?). SAC and PPO use SB3's default hyperparameters.
The script prints a table and writes ``<out>.md``, ``<out>.png`` and ``<out>.json``.

    python scripts/bench_learning.py --steps 5000 --seeds 0 1 2 --preset small
    python scripts/bench_learning.py --env CartPole-v1 --algos DreamerV3 --preset small

``--jobs DreamerV3:1 SAC:0 ...`` runs only those (algo, seed) pairs, and ``--include
earlier/learning.json`` adds the results of an earlier run with the same settings to the
report (it refuses one with other settings), so the seeds of one benchmark can be spread over
two invocations when the cores are busy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from physlink_gym import DreamerV3

#: Return that counts as solved (Pendulum-v1: the usual -200; the balance tasks: near max;
#: Acrobot-v1: Gymnasium's registered ``reward_threshold``).
TARGETS = {"Pendulum-v1": -200.0, "InvertedPendulum-v5": 950.0, "CartPole-v1": 475.0,
           "Acrobot-v1": -100.0}


class EvalEvery(BaseCallback):
    """Evaluate 10 deterministic episodes every ``every`` env steps; time the updates."""

    def __init__(self, env_id: str, every: int, seed: int) -> None:
        super().__init__()
        self.every = every
        self.eval_env = Monitor(gym.make(env_id))
        self.eval_env.reset(seed=10_000 + seed)
        self.points: list[tuple[int, float, float]] = []
        self.start = time.perf_counter()
        self.eval_time = 0.0
        self.eval_cpu = 0.0

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            t0, c0 = time.perf_counter(), time.process_time()
            mean, std = evaluate_policy(self.model, self.eval_env, n_eval_episodes=10,
                                        deterministic=True)
            self.eval_time += time.perf_counter() - t0
            self.eval_cpu += time.process_time() - c0
            train_s = time.perf_counter() - self.start - self.eval_time
            self.points.append((self.num_timesteps, float(mean), float(std), train_s))
            print(f"  {type(self.model).__name__:9s} step {self.num_timesteps:6d} "
                  f"return {mean:8.1f} ± {std:5.1f}", flush=True)
        return True


def run_one(args: tuple[str, int, dict]) -> dict:
    """Train one agent on one seed; returns its curve and timings."""
    algo, seed, opts = args
    torch.set_num_threads(opts["threads"])
    env = gym.make(opts["env"])
    if algo == "DreamerV3":
        model: Any = DreamerV3("MlpPolicy", env, preset=opts["preset"], seed=seed,
                               train_ratio=opts["train_ratio"],
                               learning_starts=opts["learning_starts"],
                               policy_kwargs=opts["overrides"] or None, device="cpu")
    elif algo == "SAC":
        model = SAC("MlpPolicy", env, seed=seed, device="cpu")
    else:
        model = PPO("MlpPolicy", env, seed=seed, device="cpu")
    cb = EvalEvery(opts["env"], opts["eval_every"], seed)
    t0, c0 = time.perf_counter(), time.process_time()
    model.learn(opts["steps"], callback=cb)
    wall = time.perf_counter() - t0 - cb.eval_time
    cpu = time.process_time() - c0 - cb.eval_cpu
    n_updates = int(getattr(model, "_n_updates", 0))
    return {"algo": algo, "seed": seed, "curve": cb.points, "wall_s": wall, "cpu_s": cpu,
            "n_updates": n_updates, "s_per_update": wall / max(n_updates, 1),
            "env_steps_per_s": opts["steps"] / wall}


def first_reaching(curve: list, target: float) -> tuple[int, float] | None:
    """``(env steps, training seconds)`` of the first evaluation with a mean >= target."""
    return next(((p[0], p[3]) for p in curve if p[1] >= target), None)


def lowest_after(curve: list, target: float) -> float | None:
    """The lowest mean return from the first one >= target on (does it stay up?)."""
    reached = first_reaching(curve, target)
    return None if reached is None else min(p[1] for p in curve if p[0] >= reached[0])


def plot_curves(results: list[dict], target: float, env_id: str, preset: str,
                path: Path, train_ratio: float | None = None,
                overrides: dict[str, Any] | None = None) -> None:
    """Evaluation return against env steps, one line per run (colour: algo, style: seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"DreamerV3": "tab:blue", "SAC": "tab:orange", "PPO": "tab:green"}
    styles = ["-", "--", ":", "-."]
    seeds = sorted({r["seed"] for r in results})
    for r in results:
        steps = [p[0] for p in r["curve"]]
        means = [p[1] for p in r["curve"]]
        ax.plot(steps, means, color=colors[r["algo"]], alpha=0.8, marker="o", ms=3,
                ls=styles[seeds.index(r["seed"]) % len(styles)],
                label=f"{r['algo']} seed {r['seed']}")
    ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target:.0f}")
    ax.set_xlabel("env steps")
    ax.set_ylabel("eval return (10 deterministic episodes)")
    others = " vs ".join(sorted({r["algo"] for r in results} - {"DreamerV3"}))
    algos = {r["algo"] for r in results}
    setting = preset + (f", train_ratio {train_ratio:g}" if train_ratio else "")
    setting += "".join(f", {k}={v}" for k, v in (overrides or {}).items())
    title = f"DreamerV3 ({setting})" if "DreamerV3" in algos else ""
    if others:
        title += (" vs " if title else "") + f"SB3 {others}"
    ax.set_title(f"{env_id}: {title}", fontsize=12 if len(title) < 55 else 9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cpu_line() -> str:
    """The CPU's model, logical CPUs and vector ISA (learning numerics differ between ISAs)."""
    import torch

    from physlink_gym.diagnostics import cpu_summary

    cpu = cpu_summary(torch)
    return f"{cpu['model']}, {cpu['cpus']} logical CPUs, {cpu['isa']}"


def write_report(results: list[dict], opts: dict, out: Path) -> None:
    """Markdown table + plot of the curves."""
    out.parent.mkdir(parents=True, exist_ok=True)
    target, env_id = opts["target"], opts["env"]
    plot_curves(results, target, env_id, opts["preset"], out.with_suffix(".png"),
                opts["train_ratio"], opts.get("overrides"))
    lines = [
        f"# Learning: {env_id}", "",
        "Command: " + " then ".join(f"`python scripts/bench_learning.py {c}`"
                                    for c in opts["argv"].split(" && ")), "",
        f"DreamerV3 preset `{opts['preset']}`, train_ratio "
        f"{opts['train_ratio'] or 'of the preset'}, "
        f"learning_starts {opts['learning_starts']}, overrides {opts['overrides'] or 'none'}; "
        "SB3 baselines with their defaults. Evaluation: 10 deterministic episodes every "
        f"{opts['eval_every']} env steps. CPU ({opts.get('cpu', 'not recorded')}), "
        f"{opts['threads']} torch thread(s) per run, "
        f"{opts['workers']} runs at a time; load average {opts.get('load', '?')}.", "",
        f"| algo | seed | return at each eval | first reaching {target:.0f}: env steps | "
        "training seconds | lowest return after | training wall / CPU s | s/update | "
        "env steps/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        curve = ", ".join(f"{p[1]:.0f}" for p in r["curve"])
        reached = first_reaching(r["curve"], target)
        low = lowest_after(r["curve"], target)
        lines.append(f"| {r['algo']} | {r['seed']} | {curve} | "
                     f"{reached[0] if reached else 'not reached'} | "
                     f"{f'{reached[1]:.0f}' if reached else '-'} | "
                     f"{f'{low:.0f}' if low is not None else '-'} | "
                     f"{r['wall_s']:.0f} / {r.get('cpu_s', float('nan')):.0f} | "
                     f"{r['s_per_update']:.4f} | {r['env_steps_per_s']:.1f} |")
    lines += ["", f"![curves]({out.with_suffix('.png').name})", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))


def main() -> None:
    """Parse arguments, run the agents (in parallel processes) and write the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--target", type=float, default=None,
                   help=f"return counted as solved (default: {TARGETS})")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--preset", default="small")
    p.add_argument("--train-ratio", type=float, default=None, help="default: the preset's")
    p.add_argument("--learning-starts", type=int, default=512)
    p.add_argument("--override", action="append", default=[],
                   help="config override key=value (JSON value), repeatable")
    p.add_argument("--algos", nargs="+", default=["DreamerV3", "SAC"],
                   choices=["DreamerV3", "SAC", "PPO"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="default: docs/benchmarks/learning_<env>")
    p.add_argument("--jobs", nargs="+", default=None, metavar="ALGO:SEED",
                   help="run only these pairs instead of every algo for every seed")
    p.add_argument("--include", action="append", default=[], metavar="JSON",
                   help="results of an earlier run with the same settings, to report with")
    a = p.parse_args()
    import sys

    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in a.override)}
    target = a.target if a.target is not None else TARGETS[a.env]
    opts = {"env": a.env, "target": target, "steps": a.steps, "eval_every": a.eval_every,
            "preset": a.preset, "train_ratio": a.train_ratio,
            "learning_starts": a.learning_starts, "overrides": overrides, "threads": a.threads,
            "workers": a.workers, "argv": " ".join(sys.argv[1:])}
    out = Path(a.out or f"docs/benchmarks/learning_{a.env.split('-')[0].lower()}")
    load_before = os.getloadavg()[0]
    if a.jobs:
        pairs = [(j.split(":")[0], int(j.split(":")[1])) for j in a.jobs]
    else:
        pairs = [(algo, seed) for seed in a.seeds for algo in a.algos]
    jobs = [(algo, seed, opts) for algo, seed in pairs]
    ctx = mp.get_context("spawn")
    with ctx.Pool(a.workers) as pool:
        results = pool.map(run_one, jobs, chunksize=1)
    opts["load"] = f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    opts["cpu"] = cpu_line()
    for r in results:
        r["opts"] = {k: v for k, v in opts.items() if k not in ("argv", "load", "cpu")}
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
    write_report(results, opts, out)
    for algo in sorted({r["algo"] for r in results}):
        rs = [r for r in results if r["algo"] == algo]
        reach = [first_reaching(r["curve"], target) for r in rs]
        print(f"{algo}: first (env step, training s) >= {target}: {reach}; "
              f"s/update {np.mean([r['s_per_update'] for r in rs]):.4f}; "
              f"env steps/s {np.mean([r['env_steps_per_s'] for r in rs]):.1f}")


if __name__ == "__main__":
    main()
