"""Trajectories: recording from envs and policies, invariant flags, split, safe save/load."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from physlink_gym.data import ENTRY_FIELDS, Trajectories, record_trajectories
from physlink_gym.errors import CheckpointCorruptError, ConfigurationError, ValidationError


def _controller(obs: np.ndarray) -> np.ndarray:
    return np.clip(-2.0 * obs[2:3], -2.0, 2.0).astype(np.float32)


class _Flagging(gym.Wrapper):
    """Stands in for InvariantWrapper: flags every third step and reports a cost."""

    def reset(self, **kwargs):
        self.t = 0
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "physlink": {"valid": True}}

    def step(self, action):
        self.t += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = {**info, "physlink": {"valid": self.t % 3 != 0}, "cost": float(self.t)}
        return obs, reward, terminated, truncated, info


def test_random_policy_episodes_and_truncation_keep_the_true_final_obs() -> None:
    data = record_trajectories(gym.make("Pendulum-v1"), n_episodes=2, seed=3)
    assert len(data) == 402 and data.num_episodes == 2
    assert data.episode_lengths.tolist() == [201, 201]
    assert data.is_first.nonzero()[0].tolist() == [0, 201]
    assert data.is_last.nonzero()[0].tolist() == [200, 401]
    assert not data.is_terminal.any() and data.truncated.sum() == 2
    assert (data.action[data.is_first] == 0).all() and (data.reward[data.is_first] == 0).all()
    assert data.valid.all() and data.extras == {}
    # Replaying the stored actions on a fresh env gives the stored obs, including the final one.
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=3)
    assert np.allclose(obs, data.obs[0])
    for t in range(1, 201):
        obs, reward, _, truncated, _ = env.step(data.action[t])
        assert np.allclose(obs, data.obs[t]) and reward == pytest.approx(data.reward[t], rel=1e-6)
    assert truncated and not np.allclose(data.obs[200], data.obs[201])
    again = record_trajectories(gym.make("Pendulum-v1"), n_episodes=2, seed=3)
    assert np.array_equal(again.action, data.action)  # the seed fixes the random actions


def test_callable_policy_and_stop_mid_episode() -> None:
    data = record_trajectories(gym.make("Pendulum-v1"), _controller, n_steps=50, seed=0)
    assert len(data) == 51 and data.num_episodes == 1
    assert data.is_last[-1] and not data.is_terminal.any() and data.is_last.sum() == 1
    for t in range(1, 51):
        assert np.allclose(data.action[t], _controller(data.obs[t - 1]))


def test_sb3_model_predict() -> None:
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, seed=0, device="cpu")
    data = record_trajectories(gym.make("Pendulum-v1"), model, n_steps=30, deterministic=True)
    expected, _ = model.predict(data.obs[:-1], deterministic=True)
    assert np.allclose(data.action[1:], expected, atol=1e-6)


class _Counter:
    """A recurrent 'model': its action is the number of steps since the episode start."""

    def __init__(self) -> None:
        self.starts: list[bool] = []

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
        self.starts.append(bool(episode_start[0]))
        count = 0 if state is None or episode_start[0] else state[0] + 1
        return np.array([0.01 * count], np.float32), (count,)


def test_recurrent_state_is_carried_and_reset_at_episode_start() -> None:
    env = gym.wrappers.TimeLimit(gym.make("Pendulum-v1").unwrapped, max_episode_steps=5)
    policy = _Counter()
    data = record_trajectories(env, policy, n_episodes=2, seed=0)
    assert policy.starts == [True, False, False, False, False] * 2
    assert np.allclose(data.action[:, 0], [0, 0, 0.01, 0.02, 0.03, 0.04] * 2)


def test_discrete_actions_are_stored_as_float_indices() -> None:
    data = record_trajectories(gym.make("CartPole-v1"), n_episodes=3, seed=1)
    assert data.action.shape == (len(data), 1) and data.action.dtype == np.float32
    assert set(np.unique(data.action[~data.is_first])) <= {0.0, 1.0}
    assert data.meta["discrete"] and data.meta["n_actions"] == 2
    assert data.meta["env_id"] == "CartPole-v1"
    assert data.is_terminal.sum() == 3 and (data.is_terminal == data.is_last).all()


def test_invariant_flags_and_cost_are_kept() -> None:
    data = record_trajectories(_Flagging(gym.make("Pendulum-v1")), n_steps=10, seed=0)
    assert data.valid.tolist() == [True] + [t % 3 != 0 for t in range(1, 11)]
    assert data.extras["cost"].tolist() == [0.0, *range(1, 11)]


def test_save_load_round_trip_and_corrupt_files(tmp_path) -> None:
    data = record_trajectories(_Flagging(gym.make("Pendulum-v1")), n_episodes=1, seed=0)
    path = data.save(tmp_path / "traj.pkl")  # any suffix: the bytes are npz
    with np.load(path, allow_pickle=False) as raw:
        assert "extra.cost" in raw.files
    loaded = Trajectories.load(path)
    for name in ENTRY_FIELDS:
        assert np.array_equal(getattr(loaded, name), getattr(data, name))
    assert np.array_equal(loaded.extras["cost"], data.extras["cost"])
    assert loaded.meta == data.meta
    (tmp_path / "bad.npz").write_bytes(path.read_bytes()[:500])
    for bad in (tmp_path / "bad.npz", tmp_path / "missing.npz"):
        with pytest.raises(CheckpointCorruptError):
            Trajectories.load(bad)


def test_split_concatenate_and_episodes() -> None:
    env = gym.wrappers.TimeLimit(gym.make("Pendulum-v1").unwrapped, max_episode_steps=4)
    data = record_trajectories(env, n_episodes=10, seed=0)
    train, held = data.split(0.8, seed=1)
    assert (train.num_episodes, held.num_episodes) == (8, 2)
    assert len(train) + len(held) == len(data) == 50
    assert train.is_first[0] and held.is_first[0]
    starts = {tuple(e.obs[0]) for e in data.episodes()}
    assert {tuple(e.obs[0]) for e in train.episodes()} | {
        tuple(e.obs[0]) for e in held.episodes()
    } == starts
    assert np.array_equal(data.split(0.8, seed=1)[1].obs, held.obs)  # seeded
    assert data.split(0.99)[1].num_episodes == 1  # both parts stay non-empty
    joined = Trajectories.concatenate(list(data.episodes()))
    assert np.array_equal(joined.obs, data.obs) and joined.num_episodes == 10
    with pytest.raises(ValidationError):
        data.split(1.0)
    with pytest.raises(ValidationError):
        next(data.episodes()).split(0.5)


def test_validation() -> None:
    with pytest.raises(ConfigurationError):
        record_trajectories(gym.make("Pendulum-v1"))
    with pytest.raises(ConfigurationError):
        record_trajectories(gym.make("Pendulum-v1"), policy=42, n_steps=1)
    base = {
        "obs": np.zeros((3, 2)), "action": np.zeros((3, 1)), "reward": np.zeros(3),
        "is_first": [True, False, False], "is_terminal": np.zeros(3), "is_last": np.zeros(3),
        "valid": np.ones(3),
    }  # fmt: skip
    assert len(Trajectories(**base)) == 3
    with pytest.raises(ValidationError):
        Trajectories(**{**base, "reward": np.zeros(2)})
    with pytest.raises(ValidationError, match="is_first"):
        Trajectories(**{**base, "is_first": np.zeros(3)})
    with pytest.raises(ValidationError):
        Trajectories(**base, meta={"x": object()})


def test_trajectories_feed_the_replay() -> None:
    from physlink_gym.agents.dreamerv3.replay import SequenceReplay

    data = record_trajectories(_Flagging(gym.make("Pendulum-v1")), n_episodes=2, seed=0)
    replay = SequenceReplay(1000, 1, obs_dim=3, action_dim=1, seed=0)
    replay.add_entries(data.as_dict())
    assert len(replay) == len(data)
    batch = replay.sample(32, 16)
    assert np.isin(batch["obs"][batch["valid"]], data.obs).all()
