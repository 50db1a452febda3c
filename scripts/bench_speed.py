"""Update and policy-step speed of the DreamerV3 learner on this machine.

For each preset (and torch.compile off/on) it builds a learner for a 17-dim observation and
6-dim continuous action (HalfCheetah-sized), times a few warm-up updates (the first includes any
compilation), then reports the median over ``--updates`` updates of a batch of
``--batch x --length`` replayed steps, in wall-clock seconds and process CPU seconds, and the
median latency of ``policy_step`` for 1 and 16 envs. Results go between the markers of
``docs/benchmarks/speed.md`` for that thread count (the rest of the file is left as is).

Usage:
    python scripts/bench_speed.py                       # debug, 1m, 12m, xs; compile off and on
    python scripts/bench_speed.py --presets 1m --compile off --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from physlink_gym.agents.dreamerv3.config import make_config
from physlink_gym.agents.dreamerv3.learner import DreamerV3Learner

OBS, ACT = 17, 6
# sheeprl's DreamerV3 "XS": deter (recurrent state) 256, hidden 256, 32 x 32 latents, MLPs 256.
EXTRA = {"xs": ("1m", {"deter": 256, "hidden": 256, "classes": 32, "units": 256})}
MARKERS = "<!-- results:threads={}:start -->", "<!-- results:threads={}:end -->"


def make_batch(batch: int, length: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
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


def bench_preset(name: str, compile_: bool, args: argparse.Namespace) -> dict[str, float]:
    name, _, shape = name.partition("@")  # e.g. "debug@4x16": another batch x length
    b, t = (int(v) for v in shape.split("x")) if shape else (args.batch, args.length)
    preset, extra = EXTRA.get(name, (name, {}))
    cfg = make_config(preset, compile=compile_, **extra)
    torch.manual_seed(0)
    learner = DreamerV3Learner(cfg, OBS, ACT, discrete=False)
    params = sum(p.numel() for p in learner.trainable_parameters())
    batch = make_batch(b, t, torch.Generator().manual_seed(0))
    start = time.perf_counter()
    learner.train_step(batch)
    first = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        learner.train_step(batch)
    wall, cpu = [], []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(args.updates):
        w, c = time.perf_counter(), time.process_time()
        learner.train_step(batch)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.updates
    out = {
        "params": params,
        "first": first,
        "wall": statistics.median(wall),
        "best": min(wall),
        "cpu": statistics.median(cpu),
        "faults": faults,
    }
    for envs in (1, 16):
        obs, state = torch.randn(envs, OBS), learner.initial_state(envs)
        first_flags = torch.zeros(envs, dtype=torch.bool)
        times = []
        for _ in range(args.policy_steps):
            w = time.perf_counter()
            _, state = learner.policy_step(obs, state, first_flags)
            times.append(time.perf_counter() - w)
        out[f"policy{envs}"] = statistics.median(times[10:])
    return out


def table(rows: list[tuple[str, str, dict[str, float]]], args: argparse.Namespace) -> str:
    lines = [
        f"Batch {args.batch} x {args.length} unless the preset says @BxT, "
        f"torch.set_num_threads({args.threads}), "
        f"median over {args.updates} updates after {args.warmup} warm-up updates.",
        "",
        "| preset | compile | params | updates/s | s/update (wall) | best s/update | "
        "CPU s/update | first update s | page faults/update | policy_step 1 env ms | 16 envs ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, comp, r in rows:
        lines.append(
            f"| {name} | {comp} | {r['params'] / 1e6:.2f}M | {1 / r['wall']:.2f} | "
            f"{r['wall']:.3f} | {r['best']:.3f} | {r['cpu']:.3f} | {r['first']:.1f} | "
            f"{r['faults']:.0f} | "
            f"{r['policy1'] * 1e3:.2f} | {r['policy16'] * 1e3:.2f} |"
        )
    return "\n".join(lines)


def write(path: Path, text: str, threads: int) -> None:
    start, end = (m.format(threads) for m in MARKERS)
    block = f"{start}\n{text}\n{end}"
    old = path.read_text() if path.exists() else "# DreamerV3 update speed\n"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets",
        nargs="+",
        default=["debug@4x16", "debug", "1m", "xs", "12m"],
        help="preset names, 'xs' (sheeprl's XS sizes), optionally @BxT for another batch",
    )
    parser.add_argument("--compile", choices=["off", "on", "both"], default="both")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--policy-steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/speed.md"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: "name:on|off", prints JSON
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        name, comp = args.one.rsplit(":", 1)
        print(json.dumps(bench_preset(name, comp == "on", args)))
        return
    modes = {"off": ["off"], "on": ["on"], "both": ["off", "on"]}[args.compile]
    load_before = os.getloadavg()
    rows = []
    for name in args.presets:
        for comp in modes:
            # A fresh process per row: no shared allocator state, and torch.compile's per-function
            # recompile limit (8 graphs) is not spent by the earlier rows.
            cmd = [sys.executable, __file__, *sys.argv[1:], "--one", f"{name}:{comp}"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            rows.append((name, comp, result))
            print(name, comp, {k: round(v, 4) for k, v in result.items()}, flush=True)
    load_after = os.getloadavg()
    info = (
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__}, Python {platform.python_version()}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"({time.strftime('%Y-%m-%d %H:%M')})."
    )
    text = info + "\n\n" + table(rows, args)
    print(text)
    write(args.out, text, args.threads)


if __name__ == "__main__":
    main()
