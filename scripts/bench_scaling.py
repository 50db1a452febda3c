"""Collection throughput: RayVecEnv against SubprocVecEnv and DummyVecEnv, side by side.

    python scripts/bench_scaling.py         # Ant-v5 + MuJoCo invariants, 1 and 2 workers
    python scripts/bench_scaling.py --env Pendulum-v1 --steps 2000

Each backend steps the same env (wrapped in ``InvariantWrapper`` with the default MuJoCo tier:
``finite``, ``action_bounds``, ``sim_health``, ``joint_limits``, ``mujoco_energy``,
``momentum``) under random actions for ``--steps`` vector steps, after a warm-up, with one
sub-env per worker process (``SubprocVecEnv``) or per Ray actor (``RayVecEnv``). It reports env
steps per second (wall) and the driver's CPU seconds per env step, with the load average, and
the learner's side for comparison: seconds per DreamerV3 update (``small`` preset) and per SAC
update on this machine, so the page can say which side is the bottleneck. Writes
``<out>.md`` and ``<out>.json``.
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
import torch
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from physlink_gym import InvariantWrapper
from physlink_gym.invariants.builtin import action_bounds, finite
from physlink_gym.invariants.mujoco import joint_limits, momentum, mujoco_energy, sim_health


def make_factory(env_id: str) -> Any:
    def factory() -> gym.Env:  # type: ignore[type-arg]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MuJoCo checks are NOT_APPLICABLE off MuJoCo
            return InvariantWrapper(gym.make(env_id), [
                finite(), action_bounds(), sim_health(), joint_limits(), mujoco_energy(),
                momentum()])
    return factory


def collect(venv: Any, steps: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    low, high = venv.action_space.low, venv.action_space.high
    actions = rng.uniform(low, high, size=(steps + 50, venv.num_envs, *low.shape))
    venv.seed(seed)
    venv.reset()
    for a in actions[:50]:  # warm-up
        venv.step(a.astype(np.float32))
    wall, cpu = time.perf_counter(), time.process_time()
    for a in actions[50:]:
        venv.step(a.astype(np.float32))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = steps * venv.num_envs
    return {"env_steps_per_s": n / wall, "driver_cpu_us_per_env_step": 1e6 * cpu / n}


def learner_seconds(env_id: str, updates: int) -> dict[str, float]:
    from stable_baselines3 import SAC

    from physlink_gym import DreamerV3

    out = {}
    for name in ("DreamerV3", "SAC"):
        venv = DummyVecEnv([make_factory(env_id)])
        if name == "DreamerV3":
            model: Any = DreamerV3("MlpPolicy", venv, preset="small", learning_starts=64,
                                   train_ratio=128, seed=0)  # as docs/benchmarks/scaling.md
            cfg = model.config  # env steps per update: batch x length / train_ratio
            steps = 64 + round(updates * cfg.batch_size * cfg.batch_length / cfg.train_ratio)
        else:
            model = SAC("MlpPolicy", venv, learning_starts=64, seed=0)
            steps = 64 + updates
        model.learn(64)
        cpu, wall = time.process_time(), time.perf_counter()
        model.learn(steps - 64, reset_num_timesteps=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        n = max(int(getattr(model, "_n_updates", 0)), 1)
        out[name] = {"s_per_update": wall / n, "cpu_s_per_update": cpu / n, "updates": n}
        venv.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="Ant-v5")
    parser.add_argument("--steps", type=int, default=1000, help="vector steps per backend")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--out", default="docs/benchmarks/scaling")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import ray

    from physlink_gym.vec import RayVecEnv

    ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False)
    factory = make_factory(args.env)
    rows: list[dict[str, Any]] = []
    base = collect(DummyVecEnv([factory]), args.steps)
    rows.append({"backend": "DummyVecEnv (in process)", "workers": 1, **base})
    print(rows[-1], flush=True)
    for n in args.workers:
        for name in ("SubprocVecEnv", "RayVecEnv"):
            if name == "SubprocVecEnv":
                venv: Any = SubprocVecEnv([factory] * n, start_method="fork")
            else:
                venv = RayVecEnv([factory] * n, envs_per_actor=1)
            res = collect(venv, args.steps)
            venv.close()
            rows.append({"backend": name, "workers": n, **res})
            print(rows[-1], flush=True)
    n = max(args.workers)
    venv = RayVecEnv([factory] * (4 * n), envs_per_actor=4)  # the round trip shared by 4 envs
    rows.append({"backend": "RayVecEnv, 4 envs per actor", "workers": n,
                 **collect(venv, args.steps // 4)})
    venv.close()
    print(rows[-1], flush=True)
    ray.shutdown()
    learner = learner_seconds(args.env, args.updates)
    print(learner, flush=True)
    load = os.getloadavg()
    result = {"env": args.env, "steps": args.steps, "rows": rows, "learner": learner,
              "load_average": load, "cpus": os.cpu_count()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Collection and learner throughput: {args.env}",
        "",
        f"`python scripts/bench_scaling.py --env {args.env} --steps {args.steps}` on this "
        f"{os.cpu_count()}-core machine, load average {load[0]:.2f} / {load[1]:.2f} / "
        f"{load[2]:.2f}, one torch thread. Each sub-env is wrapped in `InvariantWrapper` with "
        "the MuJoCo tier (finite, action_bounds, sim_health, joint_limits, mujoco_energy, "
        "momentum); one sub-env per worker unless said; random actions.",
        "",
        "| backend | workers | env steps/s | vs DummyVecEnv | driver CPU µs / env step |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['workers']} | {r['env_steps_per_s']:.0f} | "
                     f"{r['env_steps_per_s'] / base['env_steps_per_s']:.2f}x | "
                     f"{r['driver_cpu_us_per_env_step']:.0f} |")
    lines += ["", "Learner, one process, one torch thread (same env):", "",
              "| algorithm | s / update (wall) | CPU s / update | updates timed |",
              "|---|---|---|---|"]
    for name, v in learner.items():
        lines.append(f"| {name} | {v['s_per_update']:.4f} | {v['cpu_s_per_update']:.4f} | "
                     f"{v['updates']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
