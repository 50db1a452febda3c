"""Cost of collecting one env step with DreamerV3: a baseline revision against the working tree.

Collection is everything ``learn()`` does per env step apart from the updates: the policy's
RSSM step and action, the env step (SB3's ``DummyVecEnv`` and ``Monitor`` around the env), the
replay write and the loop's bookkeeping. At 100k env steps every millisecond of it is 100 s.
Each version runs in its own process (``git archive`` of ``--baseline`` against the checked-out
tree), rounds alternating between them so that load drifts hit both; each round collects
``--steps`` env steps with no update (``learning_starts`` above the run) and reports process
CPU microseconds per env step (the least noisy figure on a shared machine) beside wall-clock,
for the whole loop and for its parts measured alone (``act``: the policy step on the last
observation; ``env``: the vector env's step; ``replay``: the replay write). ``--wrapper`` adds
InvariantWrapper's default tier (``finite``, ``action_bounds``, ``sim_health``) around the env.

    python scripts/bench_acting.py --baseline HEAD~1 --env Hopper-v5 --preset small
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_speed import export_baseline  # the baseline's package, extracted with git archive

ROOT = Path(__file__).resolve().parent.parent


def measure(args: argparse.Namespace) -> dict[str, float]:
    """One round in this process (the ``physlink_gym`` first on ``sys.path``)."""
    import gymnasium as gym
    import numpy as np
    import torch

    from physlink_gym import DreamerV3

    torch.set_num_threads(1)
    env: Any = gym.make(args.env)
    if args.wrapper:
        from physlink_gym import InvariantWrapper, invariants

        env = InvariantWrapper(env, [invariants.finite(), invariants.action_bounds(),
                                     invariants.sim_health()])
    model = DreamerV3("MlpPolicy", env, preset=args.preset, learning_starts=10**9, seed=0,
                      device="cpu")
    model.learn(200)  # opens the stream, warms the allocator

    def per_step(fn: Any, n: int) -> tuple[float, float]:
        w, c = time.perf_counter(), time.process_time()
        fn(n)
        return ((time.perf_counter() - w) / n * 1e6, (time.process_time() - c) / n * 1e6)

    wall, cpu = per_step(lambda n: model.learn(n, reset_num_timesteps=False), args.steps)
    policy, venv = model.policy, model.env
    assert venv is not None and model._policy_state is not None
    obs, state = np.asarray(model._last_obs), model._policy_state
    first = np.zeros(1, bool)

    def act(n: int) -> None:
        for _ in range(n):
            policy.act(obs, state, first, deterministic=False)

    action = np.zeros((1, *model.action_space.shape), np.float32)

    def env_steps(n: int) -> None:
        for _ in range(n):
            venv.step(action)

    replay = model.replay_buffer
    assert replay is not None
    entry = (np.zeros((1, policy.obs_dim), np.float32), np.zeros((1, policy.act_dim), np.float32),
             np.zeros(1, np.float32), np.zeros(1, bool), np.zeros(1, bool), np.ones(1, bool))

    def replay_writes(n: int) -> None:
        for _ in range(n):
            replay.add(*entry)

    parts = {name: per_step(fn, args.steps)[1]
             for name, fn in (("act", act), ("env", env_steps), ("replay", replay_writes))}
    return {"wall_us": wall, "cpu_us": cpu, **{f"{k}_cpu_us": v for k, v in parts.items()}}


def child(path: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(path), "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one"], check=True,
                         capture_output=True, text=True, env=env, cwd=path)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="HEAD", help="git revision of the baseline")
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--wrapper", action="store_true")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args)))
        return
    load = os.getloadavg()[0]
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"baseline": export_baseline(args.baseline, Path(tmp)), "new": ROOT}
        for _ in range(args.rounds):
            for version, path in paths.items():
                runs[version].append(child(path))
    keys = list(runs["new"][0])
    med = {v: {k: statistics.median(r[k] for r in rs) for k in keys} for v, rs in runs.items()}
    print(f"{args.env}, preset {args.preset}{', InvariantWrapper default tier' * args.wrapper}; "
          f"median of {args.rounds} alternating rounds of {args.steps} env steps, one torch "
          f"thread; load average {load:.2f} before, {os.getloadavg()[0]:.2f} after "
          f"({time.strftime('%Y-%m-%d %H:%M')})\n")
    print("| µs per env step | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for version in ("baseline", "new"):
        label = f"{version} ({args.baseline})" if version == "baseline" else "new (working tree)"
        print(f"| {label} | " + " | ".join(f"{med[version][k]:.0f}" for k in keys) + " |")
    print("| baseline / new | " + " | ".join(f"{med['baseline'][k] / med['new'][k]:.2f}x"
                                             for k in keys) + " |")


if __name__ == "__main__":
    main()
