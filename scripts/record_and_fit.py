"""Collect trajectories, fit DreamerV3 on them offline, then evaluate it.

    python scripts/record_and_fit.py --timesteps 5000 --gradient-steps 2000 --preset 1m
    python scripts/record_and_fit.py --timesteps 300 --gradient-steps 5 --preset debug   # smoke

Records random-action Pendulum-v1 episodes through InvariantWrapper (flagged transitions are
kept, marked invalid, and never trained on), saves them as a safe npz, splits them by episode,
fits the world model and the behaviour in imagination with ``model.fit``, compares the
world-model loss on the held-out episodes before and after, evaluates the policy in the env,
and writes a triptych of a held-out episode.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
from stable_baselines3.common.evaluation import evaluate_policy

from physlink_gym import DreamerV3, InvariantWrapper, invariants
from physlink_gym.data import Trajectories, record_trajectories
from physlink_gym.viz import triptych


def parse_args() -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--timesteps", type=int, default=5_000, help="env steps to record")
    parser.add_argument("--gradient-steps", type=int, default=2_000, help="updates in fit()")
    parser.add_argument("--preset", default="1m", help="debug | 1m | 12m | ...")
    parser.add_argument("--sequence-length", type=int, default=None,
                        help="steps per replayed window (default: the preset's)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sequences per update (default: the preset's)")  # fmt: skip
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--gif-steps", type=int, default=64, help="time steps in the triptych")
    parser.add_argument("--out", type=Path, default=Path("runs/record_and_fit"))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def make_env() -> InvariantWrapper:
    """Pendulum-v1 with finite-value and action-bound checks."""
    return InvariantWrapper(gym.make("Pendulum-v1"),
                            [invariants.finite(), invariants.action_bounds()])  # fmt: skip


def main() -> None:
    """Record, fit, evaluate."""
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = record_trajectories(make_env(), n_steps=args.timesteps, seed=args.seed)
    path = data.save(args.out / "trajectories.npz")
    data = Trajectories.load(path)
    train, held_out = data.split(0.8, seed=args.seed) if data.num_episodes > 1 else (data, data)
    print(f"recorded {len(data)} entries in {data.num_episodes} episodes -> {path}")

    model = DreamerV3(
        "MlpPolicy", make_env(), preset=args.preset, seed=args.seed,
        batch_size=args.batch_size, sequence_length=args.sequence_length,
        tensorboard_log=str(args.out),
    )  # fmt: skip
    before = model.world_model_loss(held_out)["total"]
    model.fit(train, gradient_steps=args.gradient_steps, progress_bar=False)
    after = model.world_model_loss(held_out)["total"]
    print(f"held-out world-model loss: {before:.3f} before fit, {after:.3f} after")

    mean, std = evaluate_policy(model, make_env(), n_eval_episodes=args.eval_episodes)
    print(f"evaluation: mean return {mean:.1f} ± {std:.1f} over {args.eval_episodes} episodes")
    model.save(args.out / "model")
    gif = triptych(model, held_out, args.out / "triptych_held_out.gif", steps=args.gif_steps)
    print(f"triptych of a held-out episode: {gif}")


if __name__ == "__main__":
    main()
