"""Train DreamerV3 on HalfCheetah-v5 with MuJoCo invariants (needs the ``mujoco`` extra).

    python scripts/train_mujoco.py --timesteps 100000 --preset 1m
    python scripts/train_mujoco.py --timesteps 200 --preset debug          # a smoke run
    tensorboard --logdir runs/

The env checks finite values, action bounds and simulator health as hard invariants (flagged
transitions never reach a DreamerV3 loss) and joint-limit excursions as a soft cost.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym

from physlink_gym import DreamerV3, InvariantWrapper, invariants
from physlink_gym.viz import ComplianceCallback, TriptychCallback, compliance_figure, triptych

ENV_ID = "HalfCheetah-v5"


def parse_args() -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--timesteps", type=int, default=100_000, help="env steps")
    parser.add_argument("--preset", default="1m", help="debug | 1m | 12m | ...")
    parser.add_argument("--learning-starts", type=int, default=1024)
    parser.add_argument("--train-ratio", type=float, default=None,
                        help="replayed steps per env step (default: the preset's)")  # fmt: skip
    parser.add_argument("--gif-steps", type=int, default=64, help="time steps per triptych")
    parser.add_argument("--logdir", type=Path, default=Path("runs"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-every", type=int, default=10_000,
                        help="env steps between triptych GIFs and compliance images")  # fmt: skip
    return parser.parse_args()


def make_env() -> InvariantWrapper:
    """HalfCheetah-v5 with simulator-level invariants."""
    return InvariantWrapper(
        gym.make(ENV_ID),
        [invariants.finite(), invariants.action_bounds(), invariants.sim_health(),
         invariants.joint_limits(tolerance=0.35, mode="soft")],
    )  # fmt: skip


def main() -> None:
    """Train, save, and write the report and a final triptych."""
    args = parse_args()
    env = make_env()
    model = DreamerV3("MlpPolicy", env, preset=args.preset, learning_starts=args.learning_starts,
                      train_ratio=args.train_ratio, tensorboard_log=str(args.logdir),
                      seed=args.seed, verbose=1)  # fmt: skip
    out = args.logdir / "halfcheetah"
    every = max(1, min(args.image_every, args.timesteps))
    callbacks = [
        TriptychCallback(gym.make(ENV_ID), every, out / "gifs", steps=args.gif_steps),
        ComplianceCallback(every_n_steps=every),
    ]
    model.learn(args.timesteps, callback=callbacks)
    model.save(out / "model")
    report = env.compliance_report()
    report.export(out / "compliance.json")
    compliance_figure(report).savefig(out / "compliance.png")
    gif = triptych(model, gym.make(ENV_ID), out / "triptych_final.gif", steps=args.gif_steps)
    print(report.summary())
    print(f"checkpoint: {out / 'model.zip'}\ntriptych: {gif}\ntensorboard --logdir {args.logdir}")


if __name__ == "__main__":
    main()
