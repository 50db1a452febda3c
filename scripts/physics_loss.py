"""Physics loss on or off: DreamerV3 on Pendulum-v1, side by side, same seeds, one run.

    python scripts/physics_loss.py                         # weights 0 and 1, seeds 0 1 2
    python scripts/physics_loss.py --steps 3000 --seeds 0 --weights 0 1

Each run trains the ``small`` preset on Pendulum-v1 wrapped in ``InvariantWrapper`` with
``finite`` and the soft ``pendulum_energy``, for ``--steps`` env steps (``learning_starts``
512), with ``physics_weight`` 0 (off, the default) or the given weight. Measured per run:

* learning: the mean return of 10 deterministic episodes every 1000 env steps;
* open-loop prediction error: on 10 held-out episodes of random actions, the model sees 5
  steps, then predicts under the recorded actions; the RMS error of the observation
  (cos θ, sin θ, ω) at 15 and 50 steps ahead, and of the angle alone (rad);
* imagination violation rate of ``pendulum_energy``: on the open-loop predictions of the
  model's own episodes (``imagination_report``, 64 steps) and on the actor's imagined
  rollouts from a replay batch (what the actor trains on).

Writes ``<out>.md`` and ``<out>.json`` with the load average.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_learning import EvalEvery

from physlink_gym import DreamerV3, InvariantWrapper, invariants


def heldout(episodes: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(12345)
    out = []
    for k in range(episodes):
        obs, _ = env.reset(seed=500 + k)
        seq, acts = [obs], [np.zeros(1, np.float32)]
        for _ in range(199):
            a = rng.uniform(-2, 2, 1).astype(np.float32)
            obs, *_ = env.step(a)
            seq.append(obs)
            acts.append(a)
        out.append((np.asarray(seq, np.float32), np.asarray(acts, np.float32)))
    return out


def prediction_error(model: Any, data: list, context: int = 5) -> dict[str, float]:
    from physlink_gym.viz import learner_actions, open_loop_prediction

    res: dict[str, list[float]] = {}
    for obs, acts in data:
        pred = open_loop_prediction(model, obs, learner_actions(model, acts), context=context)
        for h in (15, 50):
            i = context - 1 + h
            res.setdefault(f"rmse_obs_h{h}", []).append(
                float(np.sqrt(np.mean((pred[i] - obs[i]) ** 2))))
            angle = np.arctan2(pred[i, 1], pred[i, 0]) - np.arctan2(obs[i, 1], obs[i, 0])
            res.setdefault(f"angle_err_h{h}", []).append(
                float(np.abs(np.arctan2(np.sin(angle), np.cos(angle)))))
    return {k: float(np.mean(v)) for k, v in res.items()}


def actor_violation_rate(model: Any) -> float:
    from physlink_gym._audit import audit
    from physlink_gym.agents.dreamerv3.imagination import actor_imagination

    batch = model.replay_buffer.sample(16, 32, rng=np.random.default_rng(7))
    imagined = actor_imagination(model, batch, seed=7)
    _, report = audit(imagined, [invariants.pendulum_energy()], env=gym.make("Pendulum-v1"))
    return float(report.invariants[0].violation_rate)


def run_one(job: tuple[int, float, dict]) -> dict:
    seed, weight, opts = job
    torch.set_num_threads(1)
    env = InvariantWrapper(gym.make("Pendulum-v1"),
                           [invariants.finite(), invariants.pendulum_energy()])
    # train_ratio 128: the setting docs/benchmarks/physics_loss.md was measured with.
    model = DreamerV3("MlpPolicy", env, preset="small", learning_starts=512, seed=seed,
                      train_ratio=128, policy_kwargs={"physics_weight": weight}, device="cpu")
    cb = EvalEvery("Pendulum-v1", 1000, seed)
    t0, c0 = time.perf_counter(), time.process_time()
    model.learn(opts["steps"], callback=cb)
    wall = time.perf_counter() - t0 - cb.eval_time
    cpu = time.process_time() - c0 - cb.eval_cpu
    errors = prediction_error(model, heldout())
    check_env = InvariantWrapper(gym.make("Pendulum-v1"), [invariants.pendulum_energy()])
    report = model.imagination_report(check_env, steps=64, episodes=5, seed=seed)
    return {"seed": seed, "weight": weight, "curve": cb.points, "wall_s": wall, "cpu_s": cpu,
            "updates": int(model._n_updates), **errors,
            "open_loop_violation_rate": float(report.invariants[0].violation_rate),
            "actor_imagination_violation_rate": actor_violation_rate(model)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="docs/benchmarks/physics_loss")
    a = p.parse_args()
    opts = {"steps": a.steps}
    jobs = [(s, w, opts) for s in a.seeds for w in a.weights]
    load_before = os.getloadavg()
    with mp.get_context("spawn").Pool(a.workers) as pool:
        results = pool.map(run_one, jobs)
    load = os.getloadavg()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"results": results, "load_before": load_before, "load_after": load}, indent=1))
    keys = ["rmse_obs_h15", "rmse_obs_h50", "angle_err_h15", "angle_err_h50",
            "open_loop_violation_rate", "actor_imagination_violation_rate"]
    lines = [
        "# Physics loss: on against off (Pendulum-v1)", "",
        f"`python scripts/physics_loss.py --steps {a.steps} --seeds "
        f"{' '.join(map(str, a.seeds))} --weights {' '.join(map(str, a.weights))}`: DreamerV3 "
        "`small`, learning_starts 512, soft `pendulum_energy` (tolerance 0.58375 J) as the "
        f"physics term; {a.workers} runs at a time, one torch thread each, on this "
        f"{os.cpu_count()}-core CPU; load average {load_before[0]:.2f} before, "
        f"{load[0]:.2f} after.", "",
        "| physics_weight | seed | return at each eval (1k steps apart) | RMSE obs h15 | "
        "RMSE obs h50 | angle err h15 (rad) | angle err h50 (rad) | open-loop violation "
        "rate | actor-imagination violation rate | training s (CPU) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        curve = ", ".join(f"{pt[1]:.0f}" for pt in r["curve"])
        lines.append(
            f"| {r['weight']:g} | {r['seed']} | {curve} | {r['rmse_obs_h15']:.3f} | "
            f"{r['rmse_obs_h50']:.3f} | {r['angle_err_h15']:.3f} | {r['angle_err_h50']:.3f} | "
            f"{r['open_loop_violation_rate']:.3f} | "
            f"{r['actor_imagination_violation_rate']:.3f} | {r['wall_s']:.0f} "
            f"({r['cpu_s']:.0f}) |")
    lines += ["", "Means over seeds:", "",
              "| physics_weight | final return | " + " | ".join(keys) + " |",
              "|---|---|" + "---|" * len(keys)]
    for w in a.weights:
        rows = [r for r in results if r["weight"] == w]
        final = np.mean([r["curve"][-1][1] for r in rows])
        means = [np.mean([r[k] for r in rows]) for k in keys]
        lines.append(f"| {w:g} | {final:.0f} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
