"""Does the world model dream physics? Imagination compliance over a DreamerV3 run on Pendulum-v1.

    python scripts/imagination_compliance.py                 # the figures in docs/imagination.md
    python scripts/imagination_compliance.py --steps 1200 --every 400 --preset debug --out /tmp/ic

Trains DreamerV3 on Pendulum-v1 wrapped in InvariantWrapper (``finite``, ``obs_bounds``,
``pendulum_energy``) and, every ``--every`` env steps, measures side by side the violation rate
of each invariant on (a) the real transitions of that window, (b) the actor's imagined
rollouts (``ImaginationCallback``: a replay batch, ``imag_horizon`` steps from every start)
and (c) open-loop imagination from real start states on 3 held-out episodes
(``model.imagination_report``). Saves one triptych frame with its marks early and late in
training. Writes ``<out>.md``, ``<out>.json`` and ``<out>_early.png`` / ``<out>_late.png``.
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
import torch
from PIL import Image
from stable_baselines3.common.callbacks import BaseCallback

from physlink_gym import DreamerV3, InvariantWrapper, invariants
from physlink_gym.agents.dreamerv3.imagination import ImaginationCallback
from physlink_gym.data import record_trajectories

NAMES = ("finite", "obs_bounds", "pendulum_energy")


def _checks() -> list[Any]:
    return [invariants.finite(), invariants.obs_bounds(), invariants.pendulum_energy()]


class Measure(BaseCallback):
    """Every ``every`` steps: real-window, actor-imagination and open-loop violation rates."""

    def __init__(self, env: Any, imagination: ImaginationCallback, held_out: Any, every: int,
                 frames: dict[int, Path]) -> None:
        super().__init__()
        self.env, self.imagination, self.held_out = env, imagination, held_out
        self.every, self.frames = every, frames
        self.rows: list[dict[str, Any]] = []
        self.previous: Any = None

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every:
            return True
        real = self.env.compliance_report()
        row: dict[str, Any] = {"step": self.num_timesteps}
        for name in NAMES:
            done = self.previous[name] if self.previous else None
            checked = real[name].checked - (done.checked if done else 0)
            hits = real[name].violations - (done.violations if done else 0)
            row[f"real/{name}"] = hits / max(checked, 1)
        self.previous = real
        actor = self.imagination.last_report
        open_loop = self.model.imagination_report(self.held_out, _checks(), steps=64, context=5,
                                                  episodes=3)
        for name in NAMES:
            row[f"actor/{name}"] = actor[name].violation_rate if actor else float("nan")
            row[f"open_loop/{name}"] = open_loop[name].violation_rate
        self.rows.append(row)
        print(row, flush=True)
        if self.num_timesteps in self.frames:
            gif = self.model.visualize(self.held_out, self.frames[self.num_timesteps].with_suffix(
                ".gif"), steps=48, invariants=_checks())
            image = Image.open(gif)
            image.seek(image.n_frames - 1)
            image.convert("RGB").save(self.frames[self.num_timesteps])
            gif.unlink()
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-ratio", type=float, default=128.0,
                        help="default: 128, the setting docs/benchmarks/imagination.md was "
                        "measured with")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/benchmarks/imagination")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = InvariantWrapper(gym.make("Pendulum-v1"), _checks())
    held_out = record_trajectories(gym.make("Pendulum-v1"), n_episodes=3, seed=1000)
    model = DreamerV3("MlpPolicy", env, preset=args.preset, seed=args.seed, learning_starts=512,
                      train_ratio=args.train_ratio)
    imagination = ImaginationCallback(every_n_steps=args.every)
    early = 2 * args.every
    frames = {early: out.parent / f"{out.name}_early.png",
              args.steps: out.parent / f"{out.name}_late.png"}
    measure = Measure(env, imagination, held_out, args.every, frames)
    load, wall = os.getloadavg(), time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.learn(args.steps, callback=[imagination, measure])
    result = {"rows": measure.rows, "args": vars(args), "wall_s": time.perf_counter() - wall,
              "load_average": [load, os.getloadavg()]}
    header = "| env step | " + " | ".join(
        f"{name}: real / actor / open loop" for name in NAMES) + " |"
    lines = [
        "# Imagination compliance on Pendulum-v1", "",
        f"`python scripts/imagination_compliance.py` (preset `{args.preset}`, seed {args.seed}, "
        f"{args.threads} torch threads; load average {load[0]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after). Violation rates of each invariant on the real "
        "transitions of the last window, on the actor's imagined rollouts (a replay batch, "
        "every start, `imag_horizon` steps) and on open-loop imagination from the real starts "
        "of 3 held-out episodes (5 observed steps, 59 imagined).", "",
        header, "|---:|" + "---|" * len(NAMES),
    ]
    for row in measure.rows:
        cells = [" / ".join(f"{row[f'{kind}/{name}']:.3f}" for kind in ("real", "actor",
                                                                         "open_loop"))
                 for name in NAMES]
        lines.append(f"| {row['step']} | " + " | ".join(cells) + " |")
    lines += ["", f"Early (after {early} steps) and late (after {args.steps} steps): the last "
              "frame of the triptych of a held-out episode, with the invariants its last "
              "imagined step violates.", "",
              f"![early]({frames[early].name})", "", f"![late]({frames[args.steps].name})", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
