"""DreamerV3.fit on collected trajectories, and world_model_loss on held-out data."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from physlink_gym import DreamerV3
from physlink_gym.data import Trajectories, record_trajectories
from physlink_gym.errors import ValidationError

# A quick learner: no warm-up and a large learning rate, so a few dozen updates show progress.
FIT = dict(preset="debug", learning_starts=10**6, batch_size=4, sequence_length=16, seed=0,
           buffer_size=4096, learning_rate=3e-3, policy_kwargs={"warmup": 0})  # fmt: skip


def short_pendulum():
    return gym.make("Pendulum-v1", max_episode_steps=60)


@pytest.fixture(scope="module")
def pendulum_data():
    data = record_trajectories(short_pendulum(), n_episodes=6, seed=0)
    return data.split(4 / 6, seed=0)


def test_fit_lowers_the_world_model_loss_on_held_out_trajectories(pendulum_data, tmp_path):
    train, held_out = pendulum_data
    model = DreamerV3("MlpPolicy", short_pendulum(), tensorboard_log=str(tmp_path), **FIT)
    before = model.world_model_loss(held_out)
    assert model.world_model_loss(held_out) == before  # reproducible, no side effects
    returned = model.fit(train, gradient_steps=30, log_interval=10)
    after = model.world_model_loss(held_out)
    assert returned is model and model._n_updates == 30
    assert after["total"] < 0.9 * before["total"], (before, after)
    assert after["dec"] < before["dec"]
    assert (tmp_path / "DreamerV3_fit_1").is_dir()
    # learn() continues online: a new stream starts after the trajectories.
    model.learn(5)
    first = model.replay_buffer.state_dict()["is_first"][0][: len(model.replay_buffer)]
    assert first[len(train)] and first.sum() == train.num_episodes + 1


def test_flagged_transitions_are_not_trained_on(pendulum_data):
    train, _ = pendulum_data
    flagged = np.zeros(len(train), bool)
    flagged[5::7] = True
    clean = Trajectories(**{**train.__dict__, "valid": ~flagged})
    poisoned_obs = train.obs.copy()
    poisoned_obs[flagged] = 1e6  # garbage in flagged entries must change nothing
    poisoned_reward = train.reward.copy()
    poisoned_reward[flagged] = np.nan
    poisoned = Trajectories(**{**clean.__dict__, "obs": poisoned_obs, "reward": poisoned_reward})
    models = []
    for data in (clean, poisoned):
        torch.manual_seed(0)
        model = DreamerV3("MlpPolicy", short_pendulum(), **FIT)
        model.fit(data, gradient_steps=3)
        models.append(model)
    for x, y in zip(models[0].policy.state_dict().values(), models[1].policy.state_dict().values(),
                    strict=True):  # fmt: skip
        assert torch.equal(x, y)
    stored_valid = models[1].replay_buffer.state_dict()["valid"][0][: len(train)]
    np.testing.assert_array_equal(stored_valid, ~flagged)


def test_actions_are_converted_to_the_learner_space(pendulum_data):
    train, _ = pendulum_data
    model = DreamerV3("MlpPolicy", short_pendulum(), **FIT)
    model.fit(train, gradient_steps=0)
    stored = model.replay_buffer.state_dict()["action"][0][: len(train)]
    np.testing.assert_allclose(stored[~train.is_first], train.action[~train.is_first] / 2.0,
                               atol=1e-6)  # Pendulum's [-2, 2] -> [-1, 1]  # fmt: skip
    cartpole = record_trajectories(gym.make("CartPole-v1"), n_episodes=2, seed=0)
    model = DreamerV3("MlpPolicy", "CartPole-v1", **FIT)
    model.fit(cartpole, gradient_steps=0)
    stored = model.replay_buffer.state_dict()["action"][0][: len(cartpole)]
    steps = ~cartpole.is_first
    np.testing.assert_array_equal(stored[steps].argmax(1), cartpole.action[steps, 0])
    np.testing.assert_array_equal(stored[steps].sum(1), 1.0)
    assert not stored[cartpole.is_first].any()  # no action leads into a first entry
    with pytest.raises(ValidationError, match="action width"):
        DreamerV3("MlpPolicy", "Pendulum-v1", **FIT).fit(cartpole, gradient_steps=1)


def test_a_box_dimension_with_low_equal_high_converts_to_zero() -> None:
    # Regression: 2 (a - low) / (high - low) - 1 divided by zero, every entry turned NaN and was
    # stored invalid, so fit() trained on nothing.
    from gymnasium import spaces

    from physlink_gym.agents.dreamerv3.offline import learner_entries

    env = gym.make("Pendulum-v1")
    env.action_space = spaces.Box(np.array([-2.0, 1.0], np.float32),
                                  np.array([2.0, 1.0], np.float32))
    model = DreamerV3("MlpPolicy", env, preset="debug", learning_starts=10**6, seed=0)
    n = 6
    data = Trajectories(
        obs=np.zeros((n, 3), np.float32), action=np.tile([[1.0, 1.0]], (n, 1)),
        reward=np.zeros(n), is_first=np.eye(1, n, dtype=bool)[0], is_terminal=np.zeros(n, bool),
        is_last=np.zeros(n, bool), valid=np.ones(n, bool),
    )
    action = learner_entries(model.policy, data)["action"]
    assert np.isfinite(action).all()
    np.testing.assert_allclose(action[1:], np.tile([[0.5, 0.0]], (n - 1, 1)))
    assert np.array_equal(model.policy.to_env_action(action[1:])[:, 1], np.ones(n - 1))
