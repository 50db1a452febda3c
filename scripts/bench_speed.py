"""DreamerV3 update speed: a baseline revision against the working tree, side by side in one run.

For each preset and each code version (``--baseline REV``, by default the last commit before the
update was rewritten as one function, against the checked-out tree) a fresh process builds a
learner for a 17-dim observation and 6-dim continuous action (HalfCheetah-sized), times the
first update (any compilation included) and a few warm-up updates, then reports over
``--updates`` updates of a ``--batch x --length`` window: the median wall-clock and process CPU
seconds, the number of ``torch.profiler`` events of one update (the figure that predicts kernel
launches on an accelerator) and the median ``policy_step`` latency. The rows alternate between
versions so that load drifts hit both. Results go between the markers of
``docs/benchmarks/speed.md`` for that thread count, with the load average before and after.

Usage:
    python scripts/bench_speed.py --threads 2                 # debug, 1m, 12m: baseline vs now
    python scripts/bench_speed.py --presets 1m --versions new --compile on off
    python scripts/bench_speed.py --presets small --length 32 --interleave --updates 15
    python scripts/bench_speed.py --presets small 1m 12m --interleave dtype   # float32 vs bf16
    python scripts/bench_speed.py --presets 1m --interleave dtype --dtype mixed --compile on
    python scripts/bench_speed.py --presets debug --whole-graph --updates 8    # ~10 min compile
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "c9e1354"  # last commit before the update became one function (update.py)
OBS, ACT = 17, 6
MARKERS = "<!-- results:threads={}:start -->", "<!-- results:threads={}:end -->"


def build(preset: str, compile_: bool, dtype: str = "float32") -> Any:
    """A learner of ``preset`` from the ``physlink_gym`` first on ``sys.path``, seeded alike."""
    import torch

    from physlink_gym.agents.dreamerv3.config import make_config
    from physlink_gym.agents.dreamerv3.learner import DreamerV3Learner

    torch.manual_seed(0)
    extra = {} if dtype == "float32" else {"compute_dtype": dtype}  # the baseline: float32 only
    cfg = make_config(preset, compile=compile_, **extra)
    return DreamerV3Learner(cfg, OBS, ACT, discrete=False)


def update(learner: Any, batch: dict[str, object]) -> None:
    """One update, waiting for its values (both versions)."""
    float(learner.train_step(batch)["loss/total"])


def measure(preset: str, compile_: bool, args: argparse.Namespace) -> dict[str, float]:
    """Run in a child process whose ``sys.path`` starts with the version under test."""
    import torch
    from torch.profiler import profile

    torch.set_num_threads(args.threads)
    learner = build(preset, compile_)
    batch = make_batch(args.batch, args.length, torch.Generator().manual_seed(0))

    def one() -> None:
        update(learner, batch)

    start = time.perf_counter()
    one()
    first = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        one()
    wall, cpu = [], []
    for _ in range(args.updates):
        w, c = time.perf_counter(), time.process_time()
        one()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    with profile() as prof:
        one()
    policy = []
    obs, state = torch.randn(1, OBS), learner.initial_state(1)
    first_flags = torch.zeros(1, dtype=torch.bool)
    for _ in range(args.policy_steps):
        w = time.perf_counter()
        _, state = learner.policy_step(obs, state, first_flags)
        policy.append(time.perf_counter() - w)
    return {
        "params": sum(p.numel() for p in learner.trainable_parameters()),
        "first": first, "wall": statistics.median(wall), "best": min(wall),
        "cpu": statistics.median(cpu), "events": len(prof.events()),
        "policy": statistics.median(policy[10:]),
    }


def measure_pair(preset: str, args: argparse.Namespace) -> dict[str, float]:
    """Two learners of one preset in one process, alternating update by update.

    ``--interleave compile``: eager (``_0``) against compiled (``_1``); ``--interleave dtype``:
    float32 (``_0``) against ``--dtype`` (``_1``: ``bfloat16`` autocast everywhere, or
    ``mixed``), both compiled when ``--compile on`` is given. Drift of a shared machine then
    hits both alike; returns the medians of each.
    """
    import torch

    torch.set_num_threads(args.threads)
    if args.interleave == "dtype":
        comp = "on" in args.compile
        learners = {False: build(preset, comp), True: build(preset, comp, args.dtype)}
    else:
        learners = {comp: build(preset, comp) for comp in (False, True)}
    batch = make_batch(args.batch, args.length, torch.Generator().manual_seed(0))
    result: dict[str, float] = {}
    for comp, learner in learners.items():
        start = time.perf_counter()
        for _ in range(args.warmup):
            update(learner, batch)
        result[f"warmup_{int(comp)}"] = time.perf_counter() - start
    calls = {comp: functools.partial(update, learner, batch) for comp, learner in learners.items()}
    return {**result, **alternate(calls, args.updates)}


def alternate(calls: dict[bool, Callable[[], object]], updates: int) -> dict[str, float]:
    """Run ``calls[False]`` and ``calls[True]`` in turn ``updates`` times each.

    Returns the median wall-clock (``wall_0``/``wall_1``), best and median CPU seconds.
    """
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(updates):
        for key, call in calls.items():
            w, c = time.perf_counter(), time.process_time()
            call()
            wall[key].append(time.perf_counter() - w)
            cpu[key].append(time.process_time() - c)
    result: dict[str, float] = {}
    for key in (False, True):
        result[f"wall_{int(key)}"] = statistics.median(wall[key])
        result[f"best_{int(key)}"] = min(wall[key])
        result[f"cpu_{int(key)}"] = statistics.median(cpu[key])
    return result


def measure_whole_graph(preset: str, args: argparse.Namespace) -> dict[str, float]:
    """The whole update compiled as one graph (``train_step_graph``) against eager, one process.

    Times the first call (compiling; minutes on a CPU) and then alternates the two.
    """
    import torch

    from physlink_gym.agents.dreamerv3 import update as upd
    from physlink_gym.agents.dreamerv3.compile import train_step_graph

    torch.set_num_threads(args.threads)
    learner = build(preset, False)
    data = learner.prepare_batch(make_batch(args.batch, args.length,
                                            torch.Generator().manual_seed(0)))
    lr = torch.tensor(learner.config.lr)
    fns = {False: upd.train_step, True: train_step_graph(upd.train_step)}

    def one(graph: bool) -> None:  # the noise is drawn inside, as learner.train_step does
        noise = upd.draw_noise(learner, args.batch, args.length)
        float(fns[graph](learner, data, noise, lr)["loss/total"])

    start = time.perf_counter()
    one(True)
    first = time.perf_counter() - start
    calls = {graph: functools.partial(one, graph) for graph in (False, True)}
    return {"first_1": first, **alternate(calls, args.updates)}


def make_batch(batch: int, length: int, gen: object) -> dict[str, object]:
    import torch

    assert isinstance(gen, torch.Generator)
    is_first = torch.zeros(batch, length, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[0, length // 2] = True  # one episode boundary inside the window
    is_terminal = torch.zeros(batch, length, dtype=torch.bool)
    is_terminal[0, length // 2 - 1] = True
    return {
        "obs": torch.randn(batch, length, OBS, generator=gen) * 3,
        "action": torch.rand(batch, length, ACT, generator=gen) * 2 - 1,
        "reward": torch.randn(batch, length, generator=gen),
        "is_first": is_first,
        "is_terminal": is_terminal,
        "valid": torch.ones(batch, length, dtype=torch.bool),
    }


def export_baseline(rev: str, dest: Path) -> Path:
    """Extract ``physlink_gym/`` of ``rev`` into ``dest`` (git archive; nothing is installed)."""
    archive = dest / "baseline.tar"
    with archive.open("wb") as fh:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "physlink_gym"], stdout=fh,
                       check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run_child(path: Path, preset: str, compile_: bool, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(path)}
    cmd = [sys.executable, __file__, *sys.argv[1:], "--one", f"{preset}:{int(compile_)}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=path)
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def table(rows: list[tuple[str, str, str, dict]], args: argparse.Namespace) -> str:
    lines = [
        f"Batch {args.batch} x {args.length}, torch.set_num_threads({args.threads}), median over "
        f"{args.updates} updates after {args.warmup} warm-up updates; `events` is the number of "
        "torch.profiler events of one update.",
        "",
        "| preset | code | compile | params | s/update (wall) | best | CPU s/update | events | "
        "first update s | policy_step ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, version, comp, r in rows:
        lines.append(
            f"| {preset} | {version} | {comp} | {r['params'] / 1e6:.2f}M | {r['wall']:.3f} | "
            f"{r['best']:.3f} | {r['cpu']:.3f} | {r['events']:,} | {r['first']:.1f} | "
            f"{r['policy'] * 1e3:.2f} |"
        )
    ratios = []
    for preset in args.presets:
        old = [r for p, v, c, r in rows if p == preset and v == "baseline"]
        new = [r for p, v, c, r in rows if p == preset and v == "new" and c == "off"]
        if old and new:
            ratios.append(
                f"{preset}: {old[0]['wall'] / new[0]['wall']:.2f}x faster wall, "
                f"{old[0]['cpu'] / new[0]['cpu']:.2f}x less CPU, "
                f"{old[0]['events'] / new[0]['events']:.2f}x fewer events"
            )
    if ratios:
        lines += ["", "New (eager) against baseline: " + "; ".join(ratios) + "."]
    return "\n".join(lines)


def write(path: Path, text: str, threads: int) -> None:
    start, end = (m.format(threads) for m in MARKERS)
    block = f"{start}\n{text}\n{end}"
    old = path.read_text() if path.exists() else "# DreamerV3 update speed\n"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["debug", "1m", "12m"])
    parser.add_argument("--versions", nargs="+", choices=["baseline", "new"],
                        default=["baseline", "new"])
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the baseline")
    parser.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off"],
                        help="compile settings of the new code (the baseline runs eagerly)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--policy-steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/speed.md")
    parser.add_argument("--interleave", nargs="?", const="compile", choices=["compile", "dtype"],
                        help="print eager against compiled (or, with 'dtype', float32 against "
                        "--dtype) of the new code, alternating update by update in one process "
                        "(nothing is written)")
    parser.add_argument("--dtype", choices=["bfloat16", "mixed"], default="bfloat16",
                        help="compute_dtype set against float32 by --interleave dtype")
    parser.add_argument("--whole-graph", action="store_true",
                        help="print eager against the whole update compiled as one graph "
                        "(train_step_graph; compiling takes about 10 minutes at debug on 2 "
                        "cores; nothing is written)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: "preset:0|1", prints JSON
    args = parser.parse_args()
    if args.one:
        preset, comp = args.one.rsplit(":", 1)
        print(json.dumps(measure(preset, comp == "1", args)))
        return
    if args.whole_graph:
        for preset in args.presets:
            r = measure_whole_graph(preset, args)
            print(f"{preset}, batch {args.batch} x {args.length}, {args.threads} thread(s), "
                  f"median of {args.updates} alternating updates: eager {r['wall_0']:.3f} s "
                  f"(best {r['best_0']:.3f}), one graph {r['wall_1']:.3f} s (best "
                  f"{r['best_1']:.3f}); compiling took {r['first_1']:.0f} s", flush=True)
        return
    if args.interleave:
        for preset in args.presets:
            load = os.getloadavg()[0]
            r = measure_pair(preset, args)
            names = ("eager", "compiled")
            if args.interleave == "dtype":
                mode = "compiled" if "on" in args.compile else "eager"
                names = (f"float32 {mode}", f"{args.dtype} {mode}")
            print(f"{preset}, batch {args.batch} x {args.length}, {args.threads} thread(s), "
                  f"median of {args.updates} alternating updates (load {load:.2f} before, "
                  f"{os.getloadavg()[0]:.2f} after): {names[0]} {r['wall_0']:.3f} s (best "
                  f"{r['best_0']:.3f}, CPU {r['cpu_0']:.3f}), {names[1]} {r['wall_1']:.3f} s "
                  f"(best {r['best_1']:.3f}, CPU {r['cpu_1']:.3f}), "
                  f"{r['wall_0'] / r['wall_1']:.2f}x; warm-up {r['warmup_0']:.1f} / "
                  f"{r['warmup_1']:.1f} s", flush=True)
        return
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"new": ROOT}
        if "baseline" in args.versions:
            paths["baseline"] = export_baseline(args.baseline, Path(tmp))
        for preset in args.presets:
            for version in args.versions:
                for comp in args.compile if version == "new" else ["off"]:
                    result = run_child(paths[version], preset, comp == "on", args)
                    rows.append((preset, version, comp, result))
                    print(preset, version, comp, {k: round(v, 4) for k, v in result.items()},
                          flush=True)
    load_after = os.getloadavg()
    import torch

    from physlink_gym.diagnostics import cpu_summary

    cpu = cpu_summary(torch)
    info = (
        f"Machine: {cpu['model']} ({platform.machine()}, {cpu['isa']}, bfloat16 matmuls "
        f"{cpu['bf16']}), {os.cpu_count()} logical CPUs; baseline "
        f"{args.baseline}; Python {platform.python_version()}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"({time.strftime('%Y-%m-%d %H:%M')})."
    )
    text = info + "\n\n" + table(rows, args)
    print(text)
    write(args.out, text, args.threads)


if __name__ == "__main__":
    main()
