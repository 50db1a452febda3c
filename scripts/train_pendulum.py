"""Train DreamerV3 on Pendulum-v1 with physical invariants, TensorBoard images and a triptych.

    python scripts/train_pendulum.py --timesteps 20000 --preset 1m
    python scripts/train_pendulum.py --timesteps 300 --preset debug        # a smoke run
    tensorboard --logdir runs/

Pendulum-v1 is wrapped in InvariantWrapper (finite values, action bounds, and Pendulum's
discrete energy identity as a soft invariant); the run writes TensorBoard logs with the
compliance and world-model images, triptych GIFs, a checkpoint and the compliance report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym

from physlink_gym import DreamerV3, InvariantWrapper, invariants
from physlink_gym.viz import ComplianceCallback, TriptychCallback, compliance_figure, triptych


def parse_args() -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--timesteps", type=int, default=20_000, help="env steps")
    parser.add_argument("--preset", default="1m", help="debug | 1m | 12m | ...")
    parser.add_argument("--learning-starts", type=int, default=1024)
    parser.add_argument("--train-ratio", type=float, default=None,
                        help="replayed steps per env step (default: the preset's)")  # fmt: skip
    parser.add_argument("--gif-steps", type=int, default=64, help="time steps per triptych")
    parser.add_argument("--logdir", type=Path, default=Path("runs"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-every", type=int, default=5_000,
                        help="env steps between triptych GIFs and compliance images")  # fmt: skip
    return parser.parse_args()


def make_env() -> InvariantWrapper:
    """Pendulum-v1 with the invariants it should satisfy."""
    return InvariantWrapper(
        gym.make("Pendulum-v1"),
        [invariants.finite(), invariants.action_bounds(), invariants.pendulum_energy(mode="soft")],
    )


def main() -> None:
    """Train, save, and write the report and a final triptych."""
    args = parse_args()
    env = make_env()
    model = DreamerV3("MlpPolicy", env, preset=args.preset, learning_starts=args.learning_starts,
                      train_ratio=args.train_ratio, tensorboard_log=str(args.logdir),
                      seed=args.seed, verbose=1)  # fmt: skip
    out = args.logdir / "pendulum"
    every = max(1, min(args.image_every, args.timesteps))
    callbacks = [
        TriptychCallback(gym.make("Pendulum-v1"), every, out / "gifs", steps=args.gif_steps),
        ComplianceCallback(every_n_steps=every),
    ]
    model.learn(args.timesteps, callback=callbacks, progress_bar=False)
    model.save(out / "model")
    report = env.compliance_report()
    report.export(out / "compliance.json")
    compliance_figure(report).savefig(out / "compliance.png")
    gif = triptych(model, gym.make("Pendulum-v1"), out / "triptych_final.gif", steps=args.gif_steps,
                   dim_names=["cos(theta)", "sin(theta)", "theta_dot"])  # fmt: skip
    print(report.summary())
    print(f"checkpoint: {out / 'model.zip'}\ntriptych: {gif}\ntensorboard --logdir {args.logdir}")


if __name__ == "__main__":
    main()
