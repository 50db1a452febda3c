"""Where a DreamerV3 update's time goes: FLOPs, phases, and what this CPU's matmul can do.

For each preset: the floating-point operations of one update (``torch.utils.flop_counter``,
batch 16 x 64, the 17-dim observation / 6-dim action of ``bench_speed.py``), the process CPU
time of each phase of the update (world model forward, imagination, behaviour losses, replay
value loss, backward, optimiser step; median of ``--reps``), and the throughput that implies.
Then the throughput of plain float32 matrix products of the update's own shapes on this
machine, the ceiling for an update that is compute-bound. Results go to
``docs/benchmarks/flops.md``.

    python scripts/bench_flops.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_speed import ACT, OBS, make_batch  # noqa: E402

from physlink_gym.agents.dreamerv3 import update  # noqa: E402
from physlink_gym.agents.dreamerv3.config import make_config  # noqa: E402
from physlink_gym.agents.dreamerv3.learner import DreamerV3Learner  # noqa: E402

PHASES = ("world model forward", "imagination", "behaviour losses", "replay value loss",
          "backward", "optimiser step")


def phases(learner: DreamerV3Learner, batch: dict, reps: int) -> dict[str, float]:
    """Median CPU seconds of each phase of :func:`update.train_step`, run piece by piece."""
    data = learner.prepare_batch(batch)
    b, t = data["valid"].shape
    params = learner.optimizer.param_groups[0]["params"]
    times: dict[str, list[float]] = {k: [] for k in PHASES}
    clock = [0.0]

    def lap(name: str) -> None:
        now = time.process_time()
        times[name].append(now - clock[0])
        clock[0] = now

    for _ in range(reps):
        noise = update.draw_noise(learner, b, t)
        clock[0] = time.process_time()
        losses, _, post, feat = update.world_model_loss(learner, data, noise.post)
        lap(PHASES[0])
        feats, actions = update.imagine(learner, post, noise)
        lap(PHASES[1])
        beh, _, ret, _ = update.behaviour_loss(learner, feats, actions, data["valid"])
        lap(PHASES[2])
        losses.update(beh)
        boot = ret[0].reshape(data["valid"].shape)
        losses["repval"] = update.replay_value_loss(learner, feat, data, boot)[0]
        lap(PHASES[3])
        total = sum(losses.values())
        grads = torch.autograd.grad(total, params, allow_unused=True)
        lap(PHASES[4])
        learner.optimizer.apply(
            [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)],
            lr=torch.tensor(0.0), finite=torch.tensor(True))
        lap(PHASES[5])
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_rate(m: int, k: int, n: int, blocks: int = 0) -> float:
    """GFLOP/s of ``[m, k] @ [k, n]`` (or ``blocks`` of them batched, as ``BlockLinear``)."""
    if blocks:
        a, b = torch.randn(blocks, m, k), torch.randn(blocks, k, n)
        fn, flops = (lambda: torch.bmm(a, b)), 2 * blocks * m * k * n
    else:
        a, b = torch.randn(m, k), torch.randn(k, n)
        fn, flops = (lambda: a @ b), 2 * m * k * n
    for _ in range(3):
        fn()
    reps = max(5, int(3e9 / flops))
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return flops * reps / (time.perf_counter() - start) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["debug", "1m"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/flops.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rows = []
    for preset in args.presets:
        torch.manual_seed(0)
        learner = DreamerV3Learner(make_config(preset), OBS, ACT, discrete=False)
        batch = make_batch(16, 64, torch.Generator().manual_seed(0))
        for _ in range(2):
            learner.train_step(batch)
        with FlopCounterMode(display=False) as counter:
            float(learner.train_step(batch)["loss/total"])
        gflop = counter.get_total_flops() / 1e9
        cpu = phases(learner, batch, args.reps)
        rows.append((preset, gflop, cpu))
        print(preset, round(gflop, 2), {k: round(v, 4) for k, v in cpu.items()}, flush=True)
    cfg = make_config("1m")
    n, feat = 16 * 64, cfg.feat_dim
    block_in = cfg.deter // cfg.blocks + 3 * cfg.hidden
    shapes = [  # the largest products of a `1m` update
        (f"heads on imagined states: [{16 * n}, {feat}] @ [{feat}, {cfg.units}]",
         (16 * n, feat, cfg.units, 0)),
        (f"two-hot output layers: [{16 * n}, {cfg.units}] @ [{cfg.units}, 256]",
         (16 * n, cfg.units, 256, 0)),
        (f"block GRU, {cfg.blocks} blocks: [{n}, {block_in}] @ [{block_in}, "
         f"{cfg.deter // cfg.blocks}]", (n, block_in, cfg.deter // cfg.blocks, cfg.blocks)),
        ("large square (the machine's best case): [2048, 2048] @ [2048, 2048]",
         (2048, 2048, 2048, 0)),
    ]
    rates = [(name, matmul_rate(*shape)) for name, shape in shapes]
    lines = [
        "# Where a DreamerV3 update's time goes", "",
        f"Command: `python scripts/bench_flops.py --threads {args.threads}` "
        f"({time.strftime('%Y-%m-%d %H:%M')}; {platform.machine()}, {os.cpu_count()} logical "
        f"CPUs, torch {torch.__version__}; load average {load:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after). Batch 16 x 64, float32, eager, "
        f"torch.set_num_threads({args.threads}); CPU seconds are medians of {args.reps} "
        "updates run phase by phase.", "",
        "| preset | GFLOP per update | CPU s per update | GFLOP/s | "
        + " | ".join(PHASES) + " |",
        "|---|---|---|---|" + "---|" * len(PHASES),
    ]
    for preset, gflop, cpu in rows:
        total = sum(cpu.values())
        lines.append(f"| {preset} | {gflop:.2f} | {total:.3f} | {gflop / total:.1f} | "
                     + " | ".join(f"{cpu[k]:.3f} ({100 * cpu[k] / total:.0f}%)"
                                  for k in PHASES) + " |")
    lines += ["", f"float32 matrix products of the update's shapes, {args.threads} thread(s):",
              "", "| product | GFLOP/s |", "|---|---|"]
    lines += [f"| {name} | {rate:.1f} |" for name, rate in rates]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
