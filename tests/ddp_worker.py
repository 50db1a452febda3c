"""One rank of a data-parallel DreamerV3 run, launched by torchrun from test_distributed.py.

    torchrun --nproc_per_node 2 tests/ddp_worker.py OUT [--resume CHECKPOINT]

Each rank trains on its own Pendulum env and writes ``OUT/rank<r>.npz``: its flat weights
before and after, the observations in its replay, and what it saw of the process group.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from physlink_gym import DreamerV3
from physlink_gym.agents.dreamerv3 import distributed


def flat(model: DreamerV3) -> np.ndarray:
    return torch.cat([t.detach().reshape(-1).float()
                      for t in model.policy.state_dict().values()]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--resume", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    venv = DummyVecEnv([lambda: gym.make("Pendulum-v1", max_episode_steps=50)])
    if args.resume:
        model = DreamerV3.load(args.resume, env=venv)
    else:
        model = DreamerV3("MlpPolicy", venv, preset="debug", learning_starts=32, batch_size=4,
                          sequence_length=8, train_ratio=32, seed=0,
                          tensorboard_log=str(out / "tb"))
    before = flat(model)
    model.learn(64, reset_num_timesteps=args.resume is None)
    model.save(out / "model")
    replay = model.replay_buffer
    np.savez(out / f"rank{distributed.rank()}.npz", before=before, after=flat(model),
             obs=replay.obs[0, : int(replay._count[0])], updates=model._n_updates,
             world=distributed.world_size(), rank_attr=model.rank)


if __name__ == "__main__":
    main()
