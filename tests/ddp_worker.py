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
    from physlink_gym.agents.dreamerv3.normalize import ReturnNormalizer

    seen: list[int] = []  # how many imagined starts each update's percentiles read
    updated = ReturnNormalizer.updated

    def spy(self, returns, mask=None):  # type: ignore[no-untyped-def]
        seen.append(int(returns.shape[-1]))
        return updated(self, returns, mask)

    ReturnNormalizer.updated = spy  # type: ignore[method-assign]
    model.learn(64, reset_num_timesteps=args.resume is None)
    model.save(out / "model")
    ReturnNormalizer.updated = updated  # type: ignore[method-assign]
    replay = model.replay_buffer
    # The return percentiles of the behaviour update over every rank's returns: different
    # returns and masks per rank, the statistics the update would keep (rate 1: the percentiles).
    from physlink_gym.agents.dreamerv3.normalize import ReturnNormalizer

    r = distributed.rank()
    gen = torch.Generator().manual_seed(100 + r)
    ret = torch.randn(5, 12, generator=gen) * (1 + 4 * r) + 10 * r
    mask = (torch.rand(1, 12, generator=gen) > 0.3).float()
    gathered = distributed.all_gather_cat([ret, mask])
    stats = ReturnNormalizer(rate=1.0).updated(*gathered)
    np.savez(out / f"rank{r}.npz", before=before, after=flat(model),
             obs=replay.obs[0, : int(replay._count[0])], updates=model._n_updates,
             world=distributed.world_size(), rank_attr=model.rank, ret=ret.numpy(),
             mask=mask.numpy(), retnorm=stats.numpy(),
             percentile_starts=np.array(seen))


if __name__ == "__main__":
    main()
