"""DreamerV3.from_spaces: an agent without an env, fitted on audited data, then trained online."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from physlink_gym import ActionSpace, DreamerV3, ObservationSpace, audit
from physlink_gym.data import Trajectories, record_trajectories
from physlink_gym.errors import ConfigurationError, PhysLinkError

SMALL = dict(preset="debug", batch_size=4, sequence_length=16, seed=0, learning_starts=32,
             train_ratio=64, buffer_size=4096)  # fmt: skip
PENDULUM_OBS = ObservationSpace(low=(-1.0, -1.0, -8.0), high=(1.0, 1.0, 8.0))
PENDULUM_ACT = ActionSpace.continuous(1, [(-2.0, 2.0)])


def _steps_from_a_log(n_episodes: int = 3, length: int = 50, nan_at: int = 20) -> list[dict]:
    """Per-step dicts as another stack would log them, with one corrupted reading."""
    env = gym.make("Pendulum-v1", max_episode_steps=length)
    rng = np.random.default_rng(0)
    steps = []
    for episode in range(n_episodes):
        obs, _ = env.reset(seed=episode)
        done = False
        while not done:
            action = rng.uniform(-2, 2, size=1).astype(np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
            logged = next_obs.copy()
            if episode == 1 and len(steps) % length == nan_at:
                logged[2] = np.nan  # a dropped sensor reading
            steps.append({"obs": obs, "action": action, "reward": float(reward),
                          "terminated": terminated, "truncated": truncated,
                          "next_obs": logged})
            obs = logged
    return steps


@pytest.mark.parametrize(("obs_space", "act_space"), [
    (PENDULUM_OBS, PENDULUM_ACT),
    (PENDULUM_OBS.to_gymnasium(), PENDULUM_ACT.to_gymnasium()),
    (gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2)),
])
def test_from_spaces_builds_the_same_model_as_from_an_env(obs_space, act_space):
    model = DreamerV3.from_spaces(obs_space, act_space, **SMALL)
    gym_obs = getattr(obs_space, "to_gymnasium", lambda: obs_space)()
    assert model.env is None and model.observation_space == gym_obs
    assert model.n_envs == 1
    action, _ = model.predict(gym_obs.sample()[None], deterministic=True)
    assert len(action) == 1 and model.action_space.contains(action[0])
    # the same parameter count as a model built from an env with these spaces
    env_id = "Pendulum-v1" if gym_obs.shape == (3,) else "CartPole-v1"
    reference = DreamerV3("MlpPolicy", env_id, **SMALL)
    if gym_obs == reference.observation_space:
        count = sum(p.numel() for p in model.policy.parameters())
        assert count == sum(p.numel() for p in reference.policy.parameters())


def test_from_list_to_audit_to_fit_to_save_load_to_online(tmp_path):
    data = Trajectories.from_list(_steps_from_a_log(), action_space=PENDULUM_ACT.to_gymnasium())
    audited, report = audit(data, ["finite", "obs_bounds", "action_bounds"],
                            observation_space=PENDULUM_OBS, action_space=PENDULUM_ACT)
    assert report["finite"].violations == 1 and (~audited.valid).sum() >= 1
    model = DreamerV3.from_spaces(PENDULUM_OBS, PENDULUM_ACT, **SMALL)
    before = model.world_model_loss(audited)
    model.fit(audited, gradient_steps=20)
    after = model.world_model_loss(audited)
    assert all(np.isfinite(v) for v in after.values()), after  # the NaN entry never reached it
    assert after["total"] < before["total"]
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())

    model.save(tmp_path / "fitted")
    loaded = DreamerV3.load(tmp_path / "fitted")  # no env anywhere
    obs = np.array([[1.0, 0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0],
                                  loaded.predict(obs, deterministic=True)[0])
    with pytest.raises(ConfigurationError, match="set_env"):
        loaded.learn(10)

    loaded.set_env(gym.make("Pendulum-v1"))  # a checkpoint holds no replay (SB3's rule)
    loaded.learn(64)
    assert loaded.num_timesteps == 64 and loaded._n_updates > 20

    model.set_env(gym.make("Pendulum-v1"))
    model.learn(64)
    assert model.num_timesteps == 64 and model._n_updates > 20
    # the fitted data is still in replay, and the online stream starts after it
    first = model.replay_buffer.state_dict()["is_first"][0][: len(model.replay_buffer)]
    assert first[len(audited)] and len(model.replay_buffer) == len(audited) + 65


def test_set_env_with_other_spaces_or_env_count_is_a_clear_error():
    model = DreamerV3.from_spaces(PENDULUM_OBS, PENDULUM_ACT, **SMALL)
    with pytest.raises(ConfigurationError, match="observation_space"):
        model.set_env(gym.make("MountainCarContinuous-v0"))
    wide = ActionSpace.continuous(1, [(-1.0, 1.0)])
    other = DreamerV3.from_spaces(PENDULUM_OBS, wide, **SMALL)
    with pytest.raises(ConfigurationError, match="action_space"):
        other.set_env(gym.make("Pendulum-v1"))
    from stable_baselines3.common.env_util import make_vec_env

    with pytest.raises(ConfigurationError, match="n_envs=2"):
        model.set_env(make_vec_env("Pendulum-v1", n_envs=2))
    two = DreamerV3.from_spaces(PENDULUM_OBS, PENDULUM_ACT, n_envs=2, **SMALL)
    two.set_env(make_vec_env("Pendulum-v1", n_envs=2))
    two.learn(40)
    assert two.num_timesteps == 40


@pytest.mark.parametrize("bad", [
    "Box(3)", None, gym.spaces.Box(-1, 1, (2, 2), np.float32),
])
def test_unusable_spaces_are_clear_errors(bad):
    with pytest.raises(PhysLinkError, match="Fix"):
        DreamerV3.from_spaces(bad, PENDULUM_ACT, **SMALL)


def test_from_spaces_refuses_an_env_argument():
    with pytest.raises(ConfigurationError, match="set_env"):
        DreamerV3.from_spaces(PENDULUM_OBS, PENDULUM_ACT, env="Pendulum-v1")


def test_fit_checks_the_data_against_the_spaces():
    data = record_trajectories(gym.make("CartPole-v1"), n_steps=40, seed=0)
    model = DreamerV3.from_spaces(PENDULUM_OBS, PENDULUM_ACT, **SMALL)
    with pytest.raises(PhysLinkError, match="obs width 4"):
        model.fit(data, gradient_steps=1)
