"""Why DreamerV3 `small` at train_ratio 128 does not stay up on InvertedPendulum-v5: the cart.

Trains DreamerV3 (preset ``small``) on InvertedPendulum-v5 (or CartPole-v1, ``--env``: the
same question for the discrete task) and, every ``--eval-every`` env steps, runs deterministic
episodes and records, besides their length, where the cart goes: its largest distance from
the centre and where it sits at the end (InvertedPendulum's slider range is about +-1 and its
episode ends when the pole tilts past 0.2 rad; CartPole's ends at |x| = 2.4). The report
separates two ways a policy can score: balancing with the cart near the centre, and balancing
while the cart creeps to the end of the rail, where the pole then falls. It also says how
well the world model knows where the cart is: the RMS error of the decoded cart position
(``symexp(decoder(h, z))`` of the policy's own model state at each step) next to the spread of
the true position over the same steps; an error near the spread means the model state hardly
encodes the position.
Results go to ``docs/benchmarks/balance_drift.md`` (``--out`` for another file).

    python scripts/balance_drift.py --seed 1 --steps 3000
    python scripts/balance_drift.py --seed 1 --steps 2500 --train-ratio 512 \
        --out docs/benchmarks/balance_drift_tr512.md
    python scripts/balance_drift.py --env CartPole-v1 --seed 1 --steps 2500 --train-ratio 512 \
        --out docs/benchmarks/balance_drift_cartpole_tr512.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from physlink_gym import DreamerV3
from physlink_gym.agents.dreamerv3.distributions import symexp

ROOT = Path(__file__).resolve().parent.parent
#: End of the rail (|cart x| there ends or stops the cart) and the sentence the report uses.
RAILS = {
    "InvertedPendulum-v5": (1.0, "The slider's range is about ±1; an episode ends when the pole "
                            "tilts past 0.2 rad."),
    "CartPole-v1": (2.4, "An episode ends when the cart passes |x| = 2.4 or the pole tilts past "
                    "0.21 rad."),
}


def episode(model: DreamerV3, env: gym.Env, seed: int) -> tuple[int, float, float, np.ndarray]:
    """One deterministic episode: ``(length, max |cart x|, cart x at the end, errors)``.

    ``errors`` [length, 2]: the cart position and its decoded estimate at each step.
    """
    learner = model.policy.learner
    obs, _ = env.reset(seed=seed)
    state, start = None, np.ones(1, dtype=bool)
    xs, decoded = [], []
    for _ in range(1000):
        action, state = model.predict(obs[None], state=state, episode_start=start,
                                      deterministic=True)
        with torch.no_grad():  # the model state after observing obs: (h, z, previous action)
            feat = torch.as_tensor(np.concatenate([state[0], state[1]], -1))
            decoded.append(float(symexp(learner.decoder(feat))[0, 0]))
        xs.append(float(obs[0]))
        start = np.zeros(1, dtype=bool)
        obs, _, terminated, truncated, _ = env.step(action[0])
        if terminated or truncated:
            break
    final = float(obs[0])
    return len(xs), max(abs(x) for x in [*xs, final]), final, np.array([xs, decoded]).T


class CartWatch(BaseCallback):
    """Every ``every`` env steps: ``episodes`` deterministic episodes and where the cart went."""

    def __init__(self, env_id: str, every: int, episodes: int, seed: int) -> None:
        super().__init__()
        self.env = gym.make(env_id)
        self.rail = RAILS[env_id][0]
        self.every, self.episodes, self.seed = every, episodes, seed
        self.rows: list[tuple[int, float, float, float, int, float, float]] = []

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            assert isinstance(self.model, DreamerV3)
            runs = [episode(self.model, self.env, 10_000 * self.seed + i)
                    for i in range(self.episodes)]
            lengths = [r[0] for r in runs]
            at_rail = sum(r[1] >= 0.95 * self.rail for r in runs)
            pairs = np.concatenate([r[3] for r in runs])
            rmse = float(np.sqrt(np.mean((pairs[:, 1] - pairs[:, 0]) ** 2)))
            self.rows.append((self.num_timesteps, float(np.mean(lengths)),
                              float(np.mean([r[1] for r in runs])),
                              float(np.mean([r[2] for r in runs])), at_rail, rmse,
                              float(pairs[:, 0].std())))
            print(self.rows[-1], flush=True)
        return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="InvertedPendulum-v5", choices=sorted(RAILS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--train-ratio", type=float, default=128.0,
                   help="default: 128, the setting of the default --out")
    p.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/balance_drift.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    model = DreamerV3("MlpPolicy", args.env, preset="small", seed=args.seed,
                      learning_starts=512, train_ratio=args.train_ratio, device="cpu")
    watch = CartWatch(args.env, args.eval_every, args.episodes, args.seed)
    t0 = time.perf_counter()
    model.learn(args.steps, callback=watch)
    lines = [
        f"# Where the cart goes: DreamerV3 `small` on {args.env}", "",
        f"Command: `python scripts/{Path(__file__).name} {' '.join(sys.argv[1:])}` "
        f"({time.strftime('%Y-%m-%d %H:%M')}, load average {load:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after, {time.perf_counter() - t0:.0f} s); train_ratio "
        f"{model.config.train_ratio:g}.", "",
        f"{args.episodes} deterministic episodes every {args.eval_every} env steps. "
        f"{RAILS[args.env][1]} 'at the rail' counts the episodes whose cart reached "
        f"|x| ≥ {0.95 * RAILS[args.env][0]:.2f}. 'x error' is the "
        "RMS error of the cart position decoded from the policy's model state, over every step "
        "of those episodes; 'x spread' is the standard deviation of the true position over the "
        "same steps.", "",
        "| env steps | mean length | mean max abs(x) | mean final x | episodes at the rail "
        "| x error | x spread |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {s} | {n:.0f} | {mx:.2f} | {fx:.2f} | {rail} of {args.episodes} "
              f"| {err:.3f} | {spread:.3f} |"
              for s, n, mx, fx, rail, err, spread in watch.rows]
    marker = "## Notes added by hand"  # kept when the measured part above is rewritten
    old = args.out.read_text() if args.out.exists() else ""
    notes = old[old.index(marker):] if marker in old else ""
    args.out.write_text("\n".join(lines) + "\n" + ("\n" + notes if notes else ""))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
