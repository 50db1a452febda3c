"""Why DreamerV3 `small` does not stay up on InvertedPendulum-v5: where the cart is.

Trains DreamerV3 (preset ``small``) on InvertedPendulum-v5 and, every ``--eval-every`` env
steps, runs deterministic episodes and records, besides their length, where the cart goes:
its largest distance from the centre and where it sits at the end (the slider's range is
about +-1; the episode ends when the pole tilts past 0.2 rad). The report separates two ways a
policy can score: balancing with the cart near the centre, and balancing while the cart creeps
to the end of the rail, where the pole then falls. Results go to
``docs/benchmarks/balance_drift.md``.

    python scripts/balance_drift.py --seed 1 --steps 3000
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from physlink_gym import DreamerV3

ROOT = Path(__file__).resolve().parent.parent


def episode(model: DreamerV3, env: gym.Env, seed: int) -> tuple[int, float, float]:
    """One deterministic episode: ``(length, max |cart x|, cart x at the end)``."""
    obs, _ = env.reset(seed=seed)
    state, start = None, np.ones(1, dtype=bool)
    xs = []
    for _ in range(1000):
        action, state = model.predict(obs[None], state=state, episode_start=start,
                                      deterministic=True)
        start = np.zeros(1, dtype=bool)
        obs, _, terminated, truncated, _ = env.step(action[0])
        xs.append(float(obs[0]))
        if terminated or truncated:
            break
    return len(xs), max(abs(x) for x in xs), xs[-1]


class CartWatch(BaseCallback):
    """Every ``every`` env steps: ``episodes`` deterministic episodes and where the cart went."""

    def __init__(self, env_id: str, every: int, episodes: int, seed: int) -> None:
        super().__init__()
        self.env = gym.make(env_id)
        self.every, self.episodes, self.seed = every, episodes, seed
        self.rows: list[tuple[int, float, float, float, int]] = []

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            runs = [episode(self.model, self.env, 10_000 * self.seed + i)
                    for i in range(self.episodes)]
            lengths = [r[0] for r in runs]
            at_rail = sum(r[1] >= 0.95 for r in runs)
            self.rows.append((self.num_timesteps, float(np.mean(lengths)),
                              float(np.mean([r[1] for r in runs])),
                              float(np.mean([r[2] for r in runs])), at_rail))
            print(self.rows[-1], flush=True)
        return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="InvertedPendulum-v5")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/balance_drift.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    model = DreamerV3("MlpPolicy", args.env, preset="small", seed=args.seed,
                      learning_starts=512, device="cpu")
    watch = CartWatch(args.env, args.eval_every, args.episodes, args.seed)
    t0 = time.perf_counter()
    model.learn(args.steps, callback=watch)
    lines = [
        f"# Where the cart goes: DreamerV3 `small` on {args.env}", "",
        f"Command: `python scripts/balance_drift.py --seed {args.seed} --steps {args.steps}` "
        f"({time.strftime('%Y-%m-%d %H:%M')}, load average {load:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after, {time.perf_counter() - t0:.0f} s).", "",
        f"{args.episodes} deterministic episodes every {args.eval_every} env steps. The slider's "
        "range is about ±1; an episode ends when the pole tilts past 0.2 rad. "
        "'at the rail' counts the episodes whose cart reached |x| ≥ 0.95.", "",
        "| env steps | mean length | mean max abs(x) | mean final x | episodes at the rail |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {s} | {n:.0f} | {mx:.2f} | {fx:.2f} | {rail} of {args.episodes} |"
              for s, n, mx, fx, rail in watch.rows]
    marker = "## Notes added by hand"  # kept when the measured part above is rewritten
    old = args.out.read_text() if args.out.exists() else ""
    notes = old[old.index(marker):] if marker in old else ""
    args.out.write_text("\n".join(lines) + "\n" + ("\n" + notes if notes else ""))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
