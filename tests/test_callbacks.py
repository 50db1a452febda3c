"""Every SB3 callback with DreamerV3."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    CheckpointCallback,
    ConvertCallback,
    EvalCallback,
    EveryNTimesteps,
    LogEveryNTimesteps,
    ProgressBarCallback,
    StopTrainingOnMaxEpisodes,
    StopTrainingOnNoModelImprovement,
    StopTrainingOnRewardThreshold,
)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from physlink_gym import DreamerV3

NO_UPDATES = dict(
    preset="debug", learning_starts=10**6, batch_size=4, sequence_length=16, train_ratio=64,
    seed=0, buffer_size=4096,
)  # fmt: skip


def short_pendulum(steps=5):
    return gym.make("Pendulum-v1", max_episode_steps=steps)


def make_model(env=None, **kwargs):
    return DreamerV3("MlpPolicy", env or short_pendulum(), **{**NO_UPDATES, **kwargs})


class Counter(BaseCallback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def _on_step(self):
        self.calls.append(self.num_timesteps)
        return True


def eval_env(reward=None, steps=5):
    env = short_pendulum(steps)
    if reward is not None:
        env = gym.wrappers.TransformReward(env, lambda r: reward)
    return DummyVecEnv([lambda: Monitor(env)])


def test_checkpoint_callback_saves_model_replay_and_vec_normalize(tmp_path):
    venv = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1, seed=0))
    model = make_model(venv)
    callback = CheckpointCallback(
        save_freq=10, save_path=str(tmp_path), save_replay_buffer=True, save_vecnormalize=True
    )
    model.learn(20, callback=callback)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "rl_model_10_steps.zip", "rl_model_20_steps.zip",
        "rl_model_replay_buffer_10_steps.pkl", "rl_model_replay_buffer_20_steps.pkl",
        "rl_model_vecnormalize_10_steps.pkl", "rl_model_vecnormalize_20_steps.pkl",
    ]  # fmt: skip
    # The ".pkl" replay file SB3 names is a safe npz (loads with allow_pickle=False).
    with np.load(tmp_path / "rl_model_replay_buffer_20_steps.pkl", allow_pickle=False) as data:
        assert "obs" in data.files
    loaded = DreamerV3.load(tmp_path / "rl_model_20_steps.zip")
    assert loaded.num_timesteps == 20
    loaded.load_replay_buffer(tmp_path / "rl_model_replay_buffer_20_steps.pkl")
    assert len(loaded.replay_buffer) == len(model.replay_buffer) == 21


def test_eval_callback_stops_on_reward_threshold():
    stop = StopTrainingOnRewardThreshold(reward_threshold=-np.inf)
    callback = EvalCallback(eval_env(), eval_freq=6, n_eval_episodes=1, callback_on_new_best=stop)
    model = make_model()
    model.learn(50, callback=callback)
    assert model.num_timesteps == 6 and callback.n_calls == 6
    assert np.isfinite(callback.best_mean_reward)


def test_eval_callback_stops_on_no_model_improvement():
    stop = StopTrainingOnNoModelImprovement(max_no_improvement_evals=0, min_evals=0)
    callback = EvalCallback(eval_env(reward=0.0), eval_freq=4, n_eval_episodes=1,
                            callback_after_eval=stop)  # fmt: skip
    model = make_model()
    model.learn(50, callback=callback)
    assert model.num_timesteps == 8  # the second evaluation brings no improvement


def test_eval_callback_keeps_the_best_policy(tmp_path):
    # The way to keep the best policy of a run whose return moves up and down (balance tasks):
    # SB3's EvalCallback saves it, and it loads as a DreamerV3 with the weights of that moment.
    callback = EvalCallback(gym.make("Pendulum-v1", max_episode_steps=20), eval_freq=8,
                            n_eval_episodes=1, best_model_save_path=str(tmp_path),
                            log_path=str(tmp_path), verbose=0)
    model = make_model(short_pendulum(20), learning_starts=8, train_ratio=256)
    model.learn(40, callback=callback)
    means = np.asarray(callback.evaluations_results).mean(axis=1)
    assert len(means) == 5 and model._n_updates > 0
    best = DreamerV3.load(tmp_path / "best_model.zip")
    assert best.num_timesteps == callback.evaluations_timesteps[int(np.argmax(means))]
    action, _ = best.predict(np.zeros(3, dtype=np.float32), deterministic=True)
    assert action.shape == (1,)


def test_eval_callback_syncs_vec_normalize_statistics():
    train = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1, seed=0))
    evaluation = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1, seed=1), training=False)
    model = make_model(train)
    callback = EvalCallback(evaluation, eval_freq=10, n_eval_episodes=1)
    model.learn(10, callback=callback)
    np.testing.assert_array_equal(evaluation.obs_rms.mean, train.obs_rms.mean)
    assert callback.n_calls == 10 and np.isfinite(callback.last_mean_reward)
    assert -2000 < callback.last_mean_reward < 0  # raw Pendulum return of a 200-step episode


def test_every_n_timesteps_and_log_every_n_timesteps(monkeypatch):
    model = make_model()
    dumps = []
    monkeypatch.setattr(model, "dump_logs", lambda: dumps.append(model.num_timesteps))
    inner = Counter()
    model.learn(20, callback=[EveryNTimesteps(5, inner), LogEveryNTimesteps(n_steps=10)],
                log_interval=None)  # fmt: skip
    assert inner.calls == [5, 10, 15, 20]
    assert dumps == [10, 20]


def test_dump_logs_is_public_and_writes_rollout_stats(tmp_path):
    from stable_baselines3.common.logger import configure

    model = make_model()
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(10, log_interval=None)
    model.dump_logs()
    header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    assert {"rollout/ep_rew_mean", "time/fps", "time/total_timesteps"} <= set(header)


def test_stop_training_on_max_episodes():
    model = make_model()
    model.learn(100, callback=StopTrainingOnMaxEpisodes(max_episodes=2))
    assert model.num_timesteps == 10  # two 5-step episodes


def test_progress_bar(capsys):
    bar = ProgressBarCallback()
    model = make_model()
    model.learn(12, callback=bar)
    assert bar.pbar.n == 12
    model.learn(6, progress_bar=True)
    assert model.num_timesteps == 6


def test_plain_function_and_list_and_false_stops_after_that_step():
    seen = []

    def stop_at_7(locals_, globals_):
        seen.append(locals_["self"].num_timesteps)
        return locals_["self"].num_timesteps < 7

    counter = Counter()
    model = make_model()
    model.learn(100, callback=stop_at_7)  # a plain function
    assert model.num_timesteps == 7 and seen == list(range(1, 8))
    seen.clear()
    model.learn(100, callback=[counter, ConvertCallback(stop_at_7)])  # a list
    assert model.num_timesteps == 7 and seen == list(range(1, 8))
    assert counter.calls == list(range(1, 8))
    other = Counter()
    assert isinstance(model.learn(3, callback=CallbackList([other])), DreamerV3)
    assert other.calls == [1, 2, 3]


@pytest.mark.parametrize("n_envs", [2])
def test_false_stops_after_one_vector_step(n_envs):
    model = make_model(make_vec_env("Pendulum-v1", n_envs=n_envs, seed=0))
    model.learn(100, callback=lambda l_, g_: False)
    assert model.num_timesteps == n_envs
    assert len(model.replay_buffer) == 2 * n_envs  # the stopping step is stored too


def test_every_sb3_callback_is_importable_from_physlink_gym_callbacks():
    import physlink_gym.callbacks as callbacks
    from physlink_gym.agents.dreamerv3.imagination import ImaginationCallback
    from physlink_gym.viz import ComplianceCallback, TriptychCallback

    assert callbacks.ImaginationCallback is ImaginationCallback
    assert callbacks.TriptychCallback is TriptychCallback
    assert callbacks.ComplianceCallback is ComplianceCallback
    with pytest.raises(AttributeError, match="NoSuchCallback"):
        callbacks.NoSuchCallback  # noqa: B018
