"""DreamerV3 in the SB3 world: env kinds, VecNormalize, n_envs, predict, seeding, truncation."""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

from physlink_gym import DreamerV3
from physlink_gym.errors import ConfigurationError

# learning_starts beyond every test's horizon: these tests exercise the env loop, not updates.
NO_UPDATES = dict(
    preset="debug", learning_starts=10**6, batch_size=4, sequence_length=16, train_ratio=64,
    seed=0, buffer_size=4096,
)  # fmt: skip


def make_model(env="Pendulum-v1", **kwargs):
    return DreamerV3("MlpPolicy", env, **{**NO_UPDATES, **kwargs})


def stored(model, key, env=0):
    replay = model.replay_buffer
    return replay.state_dict()[key][env][: int(replay._count[env])]


def test_string_env_id_builds_the_env():
    model = make_model("CartPole-v1")
    assert model.get_env().num_envs == 1
    assert model.get_env().envs[0].spec.id == "CartPole-v1"
    model.learn(10)
    assert model.num_timesteps == 10


def test_raw_env_is_wrapped_in_monitor_and_dummy_vec_env():
    model = make_model(gym.make("Pendulum-v1", max_episode_steps=8))
    venv = model.get_env()
    assert isinstance(venv, DummyVecEnv) and isinstance(venv.envs[0], Monitor)
    model.learn(16)
    assert len(model.ep_info_buffer) == 2 and model.ep_info_buffer[0]["l"] == 8


def test_subproc_vec_env():
    venv = make_vec_env("CartPole-v1", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv,
                        vec_env_kwargs={"start_method": "fork"})  # fmt: skip
    try:
        model = make_model(venv)
        model.learn(20)
        assert model.num_timesteps == 20
        assert len(model.replay_buffer) >= 20  # first entries + one per env step per env
    finally:
        venv.close()


@pytest.mark.parametrize("n_envs", [1, 2, 4])
def test_num_timesteps_overshoots_by_less_than_one_vector_step(n_envs):
    model = make_model(make_vec_env("Pendulum-v1", n_envs=n_envs, seed=0))
    model.learn(13)
    assert 13 <= model.num_timesteps < 13 + n_envs
    assert model.num_timesteps % n_envs == 0


def test_vec_normalize_stores_raw_observations_and_rewards():
    venv = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1, seed=0), norm_reward=True)
    model = make_model(venv)
    model.learn(30)
    obs, reward = stored(model, "obs"), stored(model, "reward")[1:]
    # Raw Pendulum observations are (cos, sin, velocity): cos^2 + sin^2 == 1. Normalised ones not.
    np.testing.assert_allclose(obs[:, 0] ** 2 + obs[:, 1] ** 2, 1.0, atol=1e-5)
    assert np.all(reward <= 0.0) and np.all(reward >= -16.3)  # raw Pendulum rewards
    assert venv.obs_rms.count > 1  # the statistics were updated


def test_predict_unnormalises_observations_of_a_vec_normalize_env():
    venv = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1, seed=0), norm_reward=False)
    model = make_model(venv)
    model.learn(30)
    raw = np.array([[0.6, 0.8, -1.5]], np.float32)
    normalised = venv.normalize_obs(raw)
    assert not np.allclose(normalised, raw)
    torch.manual_seed(1)
    action_a, state_a = model.predict(normalised, deterministic=True)
    torch.manual_seed(1)
    action_b, state_b = model.policy.predict(raw, deterministic=True)  # raw, no VecNormalize
    np.testing.assert_allclose(action_a, action_b, atol=1e-6)
    np.testing.assert_allclose(state_a[1], state_b[1], atol=1e-6)


def test_evaluate_policy_carries_the_recurrent_state():
    model = make_model(gym.make("Pendulum-v1", max_episode_steps=6))
    calls = []
    original = model.policy.predict

    def spy(obs, state=None, episode_start=None, deterministic=False):
        action, new_state = original(obs, state, episode_start, deterministic)
        calls.append((state, None if episode_start is None else episode_start.copy(), new_state))
        return action, new_state

    model.policy.predict = spy
    env = DummyVecEnv([lambda: gym.make("Pendulum-v1", max_episode_steps=6)])
    _, lengths = evaluate_policy(model, env, n_eval_episodes=2, return_episode_rewards=True)
    assert lengths == [6, 6] and len(calls) == 12
    for (_, _, returned), (passed, _, _) in itertools.pairwise(calls):
        assert passed is returned  # each call gets the state the previous one returned
    starts = [bool(start[0]) for _, start, _ in calls]
    assert starts == [True] + [False] * 5 + [True] + [False] * 5


def test_same_seed_gives_the_same_actions_on_cpu():
    kwargs = dict(learning_starts=16, train_ratio=64)
    a = make_model(**kwargs).learn(24)
    b = make_model(**kwargs).learn(24)
    assert a._n_updates > 0
    np.testing.assert_array_equal(stored(a, "action"), stored(b, "action"))
    c = make_model(**{**kwargs, "seed": 1}).learn(24)
    assert not np.array_equal(stored(a, "action"), stored(c, "action"))


def test_predict_single_and_batched_and_rejects_the_gym_api_tuple():
    model = make_model()
    obs = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]], np.float32)
    batched, state = model.predict(obs)
    assert batched.shape == (2, 1) and state[0].shape[0] == 2
    single, state = model.predict(obs[0])
    assert single.shape == (1,) and state[0].shape[0] == 1
    with pytest.raises(ValueError, match="mixing Gym API"):
        model.predict(gym.make("Pendulum-v1").reset(seed=0))


def test_set_env_and_get_env():
    model = make_model()
    model.learn(5)
    venv = make_vec_env("Pendulum-v1", n_envs=1, seed=3)
    model.set_env(venv)
    assert model.get_env() is venv
    model.learn(6, reset_num_timesteps=False)
    assert model.num_timesteps == 11
    first = stored(model, "is_first")
    assert first.tolist() == [True] + [False] * 5 + [True] + [False] * 6  # a new stream
    with pytest.raises(ValueError):  # other spaces
        model.set_env(make_vec_env("CartPole-v1", n_envs=1))
    with pytest.raises(ConfigurationError, match=r"DreamerV3\.load"):  # SB3's rule, clear error
        model.set_env(make_vec_env("Pendulum-v1", n_envs=2))


def test_time_limit_truncation_is_stored_as_truncation_with_the_final_observation():
    finals = []

    def keep_final(locals_, globals_):
        if locals_["dones"][0]:
            finals.append(np.asarray(locals_["infos"][0]["terminal_observation"]))
        return True

    model = make_model(gym.make("Pendulum-v1", max_episode_steps=10))
    model.learn(12, callback=keep_final)
    obs, first = stored(model, "obs"), stored(model, "is_first")
    terminal = stored(model, "is_terminal")
    # entries: 0 = reset obs, 1..10 = after steps 1..10 (10 = true final obs), 11 = reset obs
    assert first[0] and first[11] and not first[1:11].any()
    assert not terminal.any()
    np.testing.assert_allclose(obs[10], finals[0], atol=1e-6)
    assert not np.allclose(obs[10], obs[11])


def test_termination_is_stored_as_terminal():
    model = make_model(gym.make("CartPole-v1"))
    model.learn(60)
    terminal, first = stored(model, "is_terminal"), stored(model, "is_first")
    assert terminal.any()
    ends = np.flatnonzero(terminal)
    assert first[ends + 1].all()  # each terminal entry is followed by a reset entry


class MaskVelocity(gym.ObservationWrapper):
    """CartPole with only positions (x, theta): a memory task."""

    def __init__(self, env):
        super().__init__(env)
        low, high = env.observation_space.low[[0, 2]], env.observation_space.high[[0, 2]]
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)

    def observation(self, observation):
        return observation[[0, 2]].astype(np.float32)


def test_predict_uses_the_recurrent_state_on_a_memory_task():
    model = make_model(MaskVelocity(gym.make("CartPole-v1")))
    model.learn(20)
    last = np.array([0.01, 0.02], np.float32)
    histories = {
        "left": [np.array([0.05 - 0.02 * t, 0.1 - 0.03 * t], np.float32) for t in range(4)],
        "right": [np.array([-0.05 + 0.02 * t, -0.1 + 0.03 * t], np.float32) for t in range(4)],
    }
    final = {}
    for name, history in histories.items():
        torch.manual_seed(0)
        state, start = None, np.array([True])
        for obs in [*history, last]:
            _, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
            start = np.array([False])
        final[name] = state
    # Same last observation, different histories (velocities): different beliefs.
    assert not np.allclose(final["left"][0], final["right"][0])
    # And the history is what matters: replaying one history gives the same belief.
    torch.manual_seed(0)
    state = None
    for t, obs in enumerate([*histories["left"], last]):
        _, state = model.predict(obs, state=state, episode_start=np.array([t == 0]),
                                 deterministic=True)  # fmt: skip
    np.testing.assert_array_equal(state[0], final["left"][0])


def test_deterministic_predict_is_exactly_repeatable():
    # Needs the latent's mode in learner.policy_step(deterministic=True) (no sampling at all).
    model = make_model()
    obs = np.array([[0.6, 0.8, -1.5], [1.0, 0.0, 0.3]], np.float32)
    _, state = model.predict(obs, deterministic=True)
    torch.manual_seed(1)
    action_a, state_a = model.predict(obs, state=state, deterministic=True)
    torch.manual_seed(2)
    action_b, state_b = model.predict(obs, state=state, deterministic=True)
    np.testing.assert_array_equal(action_a, action_b)
    for x, y in zip(state_a, state_b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_learning_rate_schedule_sets_the_rate_and_is_saved_as_its_value(tmp_path):
    from stable_baselines3.common.utils import LinearSchedule

    from physlink_gym.errors import ConfigurationError

    model = make_model(learning_rate=LinearSchedule(1e-3, 1e-4, 1.0), learning_starts=40,
                       train_ratio=16, batch_size=2, sequence_length=8)
    assert model.config.lr == pytest.approx(1e-3)  # the config records the start
    model.learn(80)
    assert model._n_updates > 0
    rates = [g["lr"] for g in model.policy.optimizer.param_groups]
    assert rates == pytest.approx([1e-4] * len(rates))  # progress 0 at the end: the end value
    model.save(tmp_path / "m")
    loaded = DreamerV3.load(tmp_path / "m")
    assert loaded.learning_rate == pytest.approx(1e-4)  # JSON holds the value, not the code
    with pytest.raises(ConfigurationError, match=r"fails at progress 1\.0"):
        make_model(learning_rate=lambda: 1e-3)


def test_a_schedule_that_turns_non_finite_stops_with_a_clear_error() -> None:
    from physlink_gym.errors import ConfigurationError

    model = DreamerV3("MlpPolicy", "Pendulum-v1", preset="debug", learning_starts=16,
                      batch_size=2, sequence_length=8, train_ratio=16, seed=0,
                      learning_rate=lambda progress: 1e-3 if progress > 0.5 else float("nan"))
    with pytest.raises(ConfigurationError, match="learning rate of nan"):
        model.learn(64)
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
