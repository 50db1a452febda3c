"""Does auditing logged data matter? A world model fitted on raw vs audited faulty Pendulum data.

    python scripts/audit_matters.py                         # the figures in docs/audit.md
    python scripts/audit_matters.py --episodes 4 --gradient-steps 20 --out /tmp/am   # smoke

Records random-action Pendulum-v1 episodes *without* InvariantWrapper through a faulty stack:
dropped readings (NaN angular speed, 1% of steps), teleports (the pendulum is put at a random
angle, 2%) and a misbehaving actuator (it applies −u while u is logged, 5%). Then
:func:`physlink_gym.audit` flags what ``finite``, ``obs_bounds``, ``action_bounds`` and a hard
``pendulum_energy`` catch. For each seed, two world models with the same initialisation are
fitted on the same entries, one on the raw data (only non-finite entries are dropped, which
the replay always does) and one on the audited data, with the same number of updates. Both are
scored on clean held-out episodes (no faults): the world-model losses
(:meth:`DreamerV3.world_model_loss`) and the open-loop prediction error (observe ``--context``
steps, then imagine ``--horizon`` steps under the real actions; mean squared error of the
decoded observation). Writes ``<out>.md`` and ``<out>.json``.
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

from physlink_gym import ActionSpace, DreamerV3, ObservationSpace, audit, invariants
from physlink_gym.data import Trajectories, record_trajectories
from physlink_gym.viz import learner_actions, open_loop_prediction

OBS = ObservationSpace(low=(-1.0, -1.0, -8.0), high=(1.0, 1.0, 8.0))
ACT = ActionSpace.continuous(1, [(-2.0, 2.0)])


class FaultyStack(gym.Wrapper):
    """Pendulum-v1 as a faulty logging stack delivers it (see the module docstring)."""

    def __init__(self, env: gym.Env, rates: dict[str, float], seed: int) -> None:
        super().__init__(env)
        self.rates = rates
        self.rng = np.random.default_rng(seed)
        self.counts = {k: 0 for k in rates}

    def step(self, action: Any) -> Any:
        u = self.rng.random(3)
        if u[0] < self.rates["actuator"]:
            self.counts["actuator"] += 1
            action = -np.asarray(action)  # the motor applies -u; the log keeps u
        obs, reward, terminated, truncated, info = self.env.step(action)
        if u[1] < self.rates["teleport"]:
            self.counts["teleport"] += 1
            base = self.env.unwrapped
            base.state = np.array([self.rng.uniform(-np.pi, np.pi), base.state[1]])
            obs = base._get_obs()
        if u[2] < self.rates["nan"]:
            self.counts["nan"] += 1
            obs = obs.copy()
            obs[2] = np.nan
        return obs, reward, terminated, truncated, info


def _record(episodes: int, seed: int, rates: dict[str, float] | None) -> tuple[Any, dict]:
    env: gym.Env = gym.make("Pendulum-v1")
    stack = FaultyStack(env, rates, seed) if rates else None
    data = record_trajectories(stack or env, n_episodes=episodes, seed=seed)
    return data, (stack.counts if stack else {})


def _open_loop_mse(model: DreamerV3, data: Trajectories, context: int, horizon: int) -> float:
    errors = []
    for episode in data.episodes():
        for start in range(0, len(episode) - context - horizon, 25):
            seg = slice(start, start + context + horizon)
            obs = episode.obs[seg]
            pred = open_loop_prediction(model, obs, learner_actions(model, episode.action[seg]),
                                        context=context, seed=start)
            errors.append(float(np.mean((pred[context:] - obs[context:]) ** 2)))
    return float(np.mean(errors))


def _fit(data: Trajectories, held_out: Trajectories, args: argparse.Namespace, seed: int,
         ) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = DreamerV3.from_spaces(OBS, ACT, preset=args.preset, seed=seed,
                                  learning_starts=10**9)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(data, gradient_steps=args.gradient_steps)
    losses = model.world_model_loss(held_out)
    return {"held_out": losses, "open_loop_mse": _open_loop_mse(model, held_out, args.context,
                                                                args.horizon),
            "fit_wall_s": time.perf_counter() - wall, "fit_cpu_s": time.process_time() - cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20, help="faulty training episodes")
    parser.add_argument("--held-out", type=int, default=5, help="clean held-out episodes")
    parser.add_argument("--gradient-steps", type=int, default=600)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--context", type=int, default=10)
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="docs/benchmarks/audit_matters")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rates = {"nan": 0.01, "teleport": 0.02, "actuator": 0.05}
    load = os.getloadavg()
    raw, counts = _record(args.episodes, 0, rates)
    held_out, _ = _record(args.held_out, 1000, None)
    checks = [invariants.finite(), invariants.obs_bounds(), invariants.action_bounds(),
              invariants.pendulum_energy(mode="hard")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        audited, report = audit(raw, checks, env=gym.make("Pendulum-v1"))
    transitions = int((~raw.is_first).sum())
    flagged = int((~audited.valid).sum())
    rows = []
    for seed in args.seeds:
        for name, data in (("raw", raw), ("audited", audited)):
            result = _fit(data, held_out, args, seed)
            rows.append({"seed": seed, "data": name, **result})
            print(f"seed {seed} {name:8s} held-out total {result['held_out']['total']:.4f} "
                  f"dec {result['held_out']['dec']:.4f} rew {result['held_out']['rew']:.4f} "
                  f"open-loop MSE {result['open_loop_mse']:.4f}", flush=True)
    summary = {}
    for name in ("raw", "audited"):
        mine = [r for r in rows if r["data"] == name]
        summary[name] = {key: float(np.mean([r["held_out"][key] for r in mine]))
                         for key in ("total", "dec", "rew", "dyn")}
        summary[name]["open_loop_mse"] = float(np.mean([r["open_loop_mse"] for r in mine]))
    result = {"faults_injected": counts, "transitions": transitions, "flagged": flagged,
              "report": report.to_dict(), "rows": rows, "summary": summary,
              "args": vars(args), "load_average": [load, os.getloadavg()]}
    lines = [
        "# Auditing logged data: a world model fitted on raw vs audited faulty data", "",
        f"`python scripts/audit_matters.py` (preset `{args.preset}`, {args.gradient_steps} "
        f"updates per model, seeds {args.seeds}, {args.threads} torch thread(s); load average "
        f"{load[0]:.2f} before, {os.getloadavg()[0]:.2f} after).", "",
        f"Training data: {args.episodes} random-action Pendulum-v1 episodes ({transitions} "
        f"transitions) through a faulty stack: {counts['nan']} dropped readings (NaN), "
        f"{counts['teleport']} teleports, {counts['actuator']} steps where the actuator applied "
        f"−u while u was logged. The audit (`finite`, `obs_bounds`, `action_bounds`, hard "
        f"`pendulum_energy`) flagged {flagged} entries.", "",
        "```", report.summary(), "```", "",
        f"Held-out: {args.held_out} clean episodes. Open loop: observe {args.context} steps, "
        f"imagine {args.horizon} under the real actions, every 25 steps.", "",
        "| seed | data | held-out total loss | dec | rew | dyn | open-loop MSE |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        h = r["held_out"]
        lines.append(f"| {r['seed']} | {r['data']} | {h['total']:.4f} | {h['dec']:.4f} | "
                     f"{h['rew']:.4f} | {h['dyn']:.4f} | {r['open_loop_mse']:.4f} |")
    for name in ("raw", "audited"):
        s = summary[name]
        lines.append(f"| mean | {name} | {s['total']:.4f} | {s['dec']:.4f} | {s['rew']:.4f} | "
                     f"{s['dyn']:.4f} | {s['open_loop_mse']:.4f} |")
    ratio = summary["raw"]["open_loop_mse"] / summary["audited"]["open_loop_mse"]
    lines += ["", f"Open-loop error, raw / audited: **{ratio:.2f}x**.", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
