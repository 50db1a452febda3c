"""DreamerV3 learns: the debug preset on a trivially learnable env (``slow``: a few minutes)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from physlink_gym import DreamerV3


class ReachTarget(gym.Env):
    """Observe a target in [-1, 1]; reward -|action - target| each step; 16 steps an episode.

    A uniform random policy earns about -0.67 a step (-10.7 an episode); the optimum is 0.
    """

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.target = np.float32(self.np_random.choice([-0.5, 0.5]))
        return np.array([self.target], np.float32), {}

    def step(self, action):
        self.t += 1
        reward = -abs(float(np.clip(action, -1, 1)[0]) - float(self.target))
        return np.array([self.target], np.float32), reward, False, self.t >= 16, {}


@pytest.mark.slow
def test_debug_preset_clearly_improves_return():
    env = Monitor(ReachTarget())
    model = DreamerV3(
        "MlpPolicy", env, preset="debug", seed=0, learning_starts=200, batch_size=8,
        sequence_length=16, train_ratio=128, policy_kwargs={"lr": 3e-4, "warmup": 50},
    )
    eval_env = Monitor(ReachTarget())
    before, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    model.learn(4000)
    after, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    # Untrained: about -8 (near-zero actions against targets of ±0.5); optimum: 0.
    assert after > before + 3.0, (before, after)
    assert after > -4.0, (before, after)
