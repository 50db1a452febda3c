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

**Long runs survive a stop.** After every evaluation each run saves its model and replay
(``DreamerV3.save`` + ``save_replay_buffer``: the project's exact resume; SB3's own files for
SAC and PPO) and its evaluation points under ``--state-dir`` (default
``~/.cache/physlink_gym/bench/<out name>/<algo>_seed<seed>/``, outside the work tree), and the
report (``<out>.json``, ``.md``, ``.png``) is rewritten with every run's points so far. The same
command run again continues each run from its last evaluation: the model, optimiser, replay
and random state are restored exactly; the env itself starts a new episode (a simulator's
state is not saved), as after a time limit. Each result records its settings, and for each
sitting the commit, the CPU and the env steps it covered. ``--steps`` may grow between
sittings; the other settings must not change (refused).

    python scripts/bench_learning.py --env Hopper-v5 --steps 100000 --eval-every 5000 \
        --preset locomotion --seeds 0 1 2 --out docs/benchmarks/locomotion_hopper
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
from physlink_gym.checkpoint import atomic_write

#: Return that counts as solved (Pendulum-v1: the usual -200; the balance tasks: near max;
#: Acrobot-v1: Gymnasium's registered ``reward_threshold``; locomotion: about SAC's published
#: return at 100k env steps, the issue's anchor, and DMC's usual 800 for walker-walk).
TARGETS = {"Pendulum-v1": -200.0, "InvertedPendulum-v5": 950.0, "CartPole-v1": 475.0,
           "Acrobot-v1": -100.0, "Hopper-v5": 1000.0, "HalfCheetah-v5": 5000.0,
           "Walker2d-v5": 1000.0, "dm_control/walker-walk-v0": 800.0}


#: Settings a resumed run must share with the run it continues (``steps`` may grow).
RESUME_KEYS = ("env", "target", "eval_every", "preset", "train_ratio", "learning_starts",
               "overrides")


def make_env(env_id: str) -> gym.Env:
    """The env of ``env_id``; DeepMind Control Suite tasks (``dm_control/<domain>-<task>-v0``,
    through shimmy: ``pip install -e ".[dmc]"``) with their dict of vectors flattened into one."""
    if env_id.startswith("dm_control/"):
        import shimmy

        gym.register_envs(shimmy)
        return gym.wrappers.FlattenObservation(gym.make(env_id))
    return gym.make(env_id)


class EvalEvery(BaseCallback):
    """Evaluate 10 deterministic episodes every ``every`` env steps; time the updates.

    ``points`` are ``(env steps, mean, std, training seconds)``; the training seconds (wall
    clock without the evaluations) run on from ``train_s`` of earlier sittings. ``on_point`` is
    called after each evaluation (the checkpoint).
    """

    def __init__(self, env_id: str, every: int, seed: int,
                 points: list[tuple[int, float, float, float]] | None = None,
                 train_s: float = 0.0, cpu_s: float = 0.0,
                 on_point: Any = None) -> None:
        super().__init__()
        self.every = every
        self.eval_env = Monitor(make_env(env_id))
        # a resumed sitting draws its evaluation episodes from a stream of its own
        self.eval_env.reset(seed=10_000 + seed + (points[-1][0] if points else 0))
        self.points: list[tuple[int, float, float, float]] = list(points or [])
        self.train_s0, self.cpu_s0 = train_s, cpu_s
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.eval_time = 0.0
        self.eval_cpu = 0.0
        self.on_point = on_point

    def train_seconds(self) -> tuple[float, float]:
        """Training wall and CPU seconds so far, over all sittings, evaluations excluded."""
        wall = time.perf_counter() - self.start - self.eval_time
        cpu = time.process_time() - self.cpu_start - self.eval_cpu
        return self.train_s0 + wall, self.cpu_s0 + cpu

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            t0, c0 = time.perf_counter(), time.process_time()
            mean, std = evaluate_policy(self.model, self.eval_env, n_eval_episodes=10,
                                        deterministic=True)
            self.eval_time += time.perf_counter() - t0
            self.eval_cpu += time.process_time() - c0
            train_s, _ = self.train_seconds()
            self.points.append((self.num_timesteps, float(mean), float(std), train_s))
            print(f"  {type(self.model).__name__:9s} step {self.num_timesteps:6d} "
                  f"return {mean:8.1f} ± {std:5.1f}  ({train_s:.0f} s)", flush=True)
            if self.on_point is not None:
                t0, c0 = time.perf_counter(), time.process_time()
                self.on_point(self)
                self.eval_time += time.perf_counter() - t0  # saving is not training either
                self.eval_cpu += time.process_time() - c0
        return True


def make_model(algo: str, seed: int, opts: dict, env: Any) -> Any:
    """A new agent with the benchmark's settings (SB3's defaults for SAC and PPO)."""
    if algo == "DreamerV3":
        return DreamerV3("MlpPolicy", env, preset=opts["preset"], seed=seed,
                         train_ratio=opts["train_ratio"],
                         learning_starts=opts["learning_starts"],
                         policy_kwargs=opts["overrides"] or None, device="cpu")
    if algo == "SAC":
        return SAC("MlpPolicy", env, seed=seed, device="cpu")
    return PPO("MlpPolicy", env, seed=seed, device="cpu")


def settings(opts: dict) -> dict:
    """What makes two runs comparable: the task, the agent's settings and the budget."""
    return {k: opts[k] for k in (*RESUME_KEYS, "steps")}


def job_dir(opts: dict, algo: str, seed: int) -> Path:
    """Where one run keeps its checkpoint, replay and progress."""
    return Path(opts["state_dir"]) / f"{algo}_seed{seed}"


def read_progress(folder: Path) -> dict | None:
    """The run's ``progress.json``, or None for a run not started."""
    path = folder / "progress.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON with the project's atomic write (a stop never leaves half a file)."""
    text = json.dumps(data, indent=1).encode()
    atomic_write(path, lambda handle: handle.write(text))


def git_commit() -> str:
    """The working tree's commit (``+dirty`` when it has uncommitted changes)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty.strip() else "")


def resume(algo: str, seed: int, opts: dict, env: Any) -> tuple[Any, dict | None]:
    """The run's model where its last checkpoint left it, or a new one; and its progress."""
    folder = job_dir(opts, algo, seed)
    progress = read_progress(folder)
    if progress is None:
        return make_model(algo, seed, opts, env), None
    check_same_settings(folder, progress, opts)
    step = progress["num_timesteps"]
    model_path, replay_path = folder / f"model_{step}.zip", folder / f"replay_{step}"
    if algo == "DreamerV3":
        model: Any = DreamerV3.load(model_path, env=env, device="cpu")
        model.load_replay_buffer(replay_path.with_suffix(".npz"))
    else:
        cls = SAC if algo == "SAC" else PPO
        model = cls.load(model_path, env=env, device="cpu")  # our own file, SB3's format
        if algo == "SAC":
            model.load_replay_buffer(replay_path.with_suffix(".pkl"))
    print(f"  {algo} seed {seed}: resuming at env step {step} from {folder}", flush=True)
    return model, progress


def check_same_settings(folder: Path, progress: dict, opts: dict) -> None:
    """Refuse to continue a run under other settings (they would mix two experiments)."""
    theirs = {k: progress["opts"].get(k) for k in RESUME_KEYS}
    ours = {k: opts.get(k) for k in RESUME_KEYS}
    if theirs != ours:
        raise ValueError(f"{folder}: a run with other settings ({theirs}); pass another "
                         f"--state-dir or --out to start anew, or the same settings ({ours})")


def checkpoint(algo: str, seed: int, opts: dict, sittings: list[dict], cb: EvalEvery) -> None:
    """Save model, replay and progress of one run (new files first, progress last)."""
    folder = job_dir(opts, algo, seed)
    folder.mkdir(parents=True, exist_ok=True)
    model, step = cb.model, int(cb.model.num_timesteps)
    model.save(folder / f"model_{step}.zip")
    if algo == "DreamerV3":
        model.save_replay_buffer(folder / f"replay_{step}.npz")
    elif algo == "SAC":
        model.save_replay_buffer(folder / f"replay_{step}.pkl")
    train_s, cpu_s = cb.train_seconds()
    sittings[-1]["end_step"] = step
    n_updates = int(getattr(model, "_n_updates", 0))
    write_json_atomic(folder / "progress.json", {
        "algo": algo, "seed": seed, "num_timesteps": step, "curve": cb.points,
        "wall_s": train_s, "cpu_s": cpu_s, "n_updates": n_updates, "sittings": sittings,
        "opts": settings(opts), "argv": opts["argv"]})
    for old in folder.iterdir():  # the previous checkpoint, now superseded
        if old.name.startswith(("model_", "replay_")) and old.stem.split("_")[-1] != str(step):
            old.unlink()
    write_report(collect(opts), opts, Path(opts["out"]))


def collect(opts: dict) -> list[dict]:
    """Every run's results so far under the state folder, in the report's format."""
    results = []
    for folder in sorted(Path(opts["state_dir"]).glob("*_seed*")):
        progress = read_progress(folder)
        if progress is not None:
            results.append(as_result(progress))
    return sorted(results, key=lambda r: (r["algo"], r["seed"]))


def as_result(progress: dict) -> dict:
    """A report row from a run's progress."""
    wall, steps = progress["wall_s"], progress["num_timesteps"]
    n_updates = progress["n_updates"]
    return {**{k: progress[k] for k in ("algo", "seed", "curve", "wall_s", "cpu_s", "n_updates",
                                        "sittings", "opts", "argv")},
            "env_steps": steps, "s_per_update": wall / max(n_updates, 1),
            "env_steps_per_s": steps / max(wall, 1e-9)}


def _exit_with_parent() -> None:
    """End this worker when the process that started it ends (killed, or the sitting over).

    A pool worker outlives a parent stopped by a signal and would go on training unseen,
    sharing the cores with the next sitting; its last checkpoint is what the next one resumes.
    """
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(5.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def run_one(args: tuple[str, int, dict]) -> dict:
    """Train one agent on one seed (resuming its last checkpoint); returns its curve."""
    algo, seed, opts = args
    _exit_with_parent()
    torch.set_num_threads(opts["threads"])
    env = make_env(opts["env"])
    model, progress = resume(algo, seed, opts, env)
    sittings = list(progress["sittings"]) if progress else []
    done = progress["num_timesteps"] if progress else 0
    sittings.append({"commit": opts["commit"], "cpu": opts["cpu"], "threads": opts["threads"],
                     "workers": opts["workers"], "start_step": done, "end_step": done,
                     "started": time.strftime("%Y-%m-%d %H:%M")})
    cb = EvalEvery(opts["env"], opts["eval_every"], seed,
                   points=[tuple(p) for p in progress["curve"]] if progress else None,
                   train_s=progress["wall_s"] if progress else 0.0,
                   cpu_s=progress["cpu_s"] if progress else 0.0,
                   on_point=lambda cb: checkpoint(algo, seed, opts, sittings, cb))
    if done < opts["steps"]:
        model.learn(opts["steps"] - done, callback=cb, reset_num_timesteps=progress is None)
    final = read_progress(job_dir(opts, algo, seed))
    if final is None:  # a run shorter than one evaluation: nothing was checkpointed
        train_s, cpu_s = cb.train_seconds()
        final = {"algo": algo, "seed": seed, "num_timesteps": int(model.num_timesteps),
                 "curve": cb.points, "wall_s": train_s, "cpu_s": cpu_s,
                 "n_updates": int(getattr(model, "_n_updates", 0)), "sittings": sittings,
                 "opts": settings(opts), "argv": opts["argv"]}
    return as_result(final)


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
    """Markdown table + plot of the curves, and the JSON of every run (partial ones too)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    target, env_id = opts["target"], opts["env"]
    plot_curves(results, target, env_id, opts["preset"], out.with_suffix(".png"),
                opts["train_ratio"], opts.get("overrides"))
    sittings = [s for r in results for s in r.get("sittings", [])]
    cpus = sorted({s["cpu"] for s in sittings}) or [opts.get("cpu", "not recorded")]
    commits = sorted({s["commit"] for s in sittings}) or [opts.get("commit", "?")]
    lines = [
        f"# Learning: {env_id}", "",
        "Command: " + " then ".join(f"`python scripts/bench_learning.py {c}`"
                                    for c in opts["argv"].split(" && ")), "",
        f"DreamerV3 preset `{opts['preset']}`, train_ratio "
        f"{opts['train_ratio'] or 'of the preset'}, "
        f"learning_starts {opts['learning_starts']}, overrides {opts['overrides'] or 'none'}; "
        "SB3 baselines with their defaults. Evaluation: 10 deterministic episodes every "
        f"{opts['eval_every']} env steps. CPU: {'; '.join(cpus)}; commit(s) "
        f"{', '.join(commits)}; {opts['threads']} torch thread(s) per run, "
        f"{opts['workers']} runs at a time; load average {opts.get('load', '?')}.", "",
        f"| algo | seed | env steps | return at each eval | first reaching {target:.0f}: "
        "env steps | training seconds | lowest return after | training wall / CPU s | "
        "s/update | env steps/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        curve = ", ".join(f"{p[1]:.0f}" for p in r["curve"])
        reached = first_reaching(r["curve"], target)
        low = lowest_after(r["curve"], target)
        steps = r.get("env_steps", opts["steps"])
        lines.append(f"| {r['algo']} | {r['seed']} | {steps} | {curve} | "
                     f"{reached[0] if reached else 'not reached'} | "
                     f"{f'{reached[1]:.0f}' if reached else '-'} | "
                     f"{f'{low:.0f}' if low is not None else '-'} | "
                     f"{r['wall_s']:.0f} / {r.get('cpu_s', float('nan')):.0f} | "
                     f"{r['s_per_update']:.4f} | {r['env_steps_per_s']:.1f} |")
    if len(sittings) > len(results):
        lines += ["", "Sittings (a run resumed from its checkpoint after a stop):", "",
                  "| algo | seed | env steps | started | commit | threads, runs at a time |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['algo']} | {r['seed']} | {s['start_step']}–{s['end_step']} | "
                  f"{s['started']} | {s['commit']} | {s['threads']}, {s['workers']} |"
                  for r in results for s in r.get("sittings", [])]
    lines += ["", f"![curves]({out.with_suffix('.png').name})", ""]
    text = "\n".join(lines).encode()
    atomic_write(out.with_suffix(".md"), lambda handle: handle.write(text))
    write_json_atomic(out.with_suffix(".json"), results)


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
    p.add_argument("--state-dir", default=None,
                   help="where runs keep checkpoints and progress (default: "
                   "~/.cache/physlink_gym/bench/<out name>)")
    a = p.parse_args()
    import sys

    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in a.override)}
    target = a.target if a.target is not None else TARGETS.get(a.env)
    if target is None:
        raise SystemExit(f"no target return known for {a.env}: pass --target")
    out = Path(a.out or f"docs/benchmarks/learning_{a.env.split('-')[0].lower()}")
    state_dir = Path(a.state_dir or Path.home() / ".cache/physlink_gym/bench" / out.name)
    opts = {"env": a.env, "target": target, "steps": a.steps, "eval_every": a.eval_every,
            "preset": a.preset, "train_ratio": a.train_ratio,
            "learning_starts": a.learning_starts, "overrides": overrides, "threads": a.threads,
            "workers": a.workers, "argv": " ".join(sys.argv[1:]), "out": str(out),
            "state_dir": str(state_dir.expanduser()), "commit": git_commit(),
            "cpu": cpu_line()}
    load_before = os.getloadavg()[0]
    if a.jobs:
        pairs = [(j.split(":")[0], int(j.split(":")[1])) for j in a.jobs]
    else:
        pairs = [(algo, seed) for seed in a.seeds for algo in a.algos]
    jobs = [(algo, seed, opts) for algo, seed in pairs]
    for algo, seed in pairs:  # before any process starts
        progress = read_progress(job_dir(opts, algo, seed))
        if progress is not None:
            try:
                check_same_settings(job_dir(opts, algo, seed), progress, opts)
            except ValueError as exc:
                raise SystemExit(str(exc)) from None
    ctx = mp.get_context("spawn")
    with ctx.Pool(a.workers) as pool:
        pool.map(run_one, jobs, chunksize=1)
    opts["load"] = f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    results = collect(opts)  # every run of this benchmark, those of earlier sittings too
    ours = settings(opts)
    for path in a.include:
        for r in json.loads(Path(path).read_text()):
            if {k: r.get("opts", {}).get(k) for k in ours} != ours:
                raise SystemExit(f"{path}: other settings ({r.get('opts')}); not merged")
            results.append(r)
    # the commands in the order they ran: included (earlier) runs first
    opts["argv"] = " && ".join(dict.fromkeys([r["argv"] for r in results]))
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
