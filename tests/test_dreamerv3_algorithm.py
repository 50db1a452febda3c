"""DreamerV3 as an SB3 algorithm: learn -> log -> save -> load -> predict, on the debug preset."""

from __future__ import annotations

import glob
import json
import os
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from physlink_gym import DreamerV3, InvariantWrapper, PhysLinkError, invariants
from physlink_gym.data import record_trajectories
from physlink_gym.errors import CheckpointCorruptError, ConfigurationError

FAST = dict(preset="debug", learning_starts=32, batch_size=4, sequence_length=16, train_ratio=32,
            seed=0)


def make_model(env="Pendulum-v1", **kwargs):
    return DreamerV3("MlpPolicy", env, **{**FAST, **kwargs})


class Recorder(BaseCallback):
    def __init__(self):
        super().__init__()
        self.events = []
        self.local_keys = set()

    def _on_training_start(self):
        self.events.append("training_start")
        self.local_keys |= set(self.locals)

    def _on_rollout_start(self):
        self.events.append("rollout_start")

    def _on_step(self):
        self.events.append("step")
        self.local_keys |= set(self.locals)
        return True

    def _on_rollout_end(self):
        self.events.append("rollout_end")

    def _on_training_end(self):
        self.events.append("training_end")


def test_learn_follows_the_sb3_callback_protocol():
    model = make_model()
    rec = Recorder()
    model.learn(40, callback=rec)
    assert model.num_timesteps == 40
    assert rec.events[0] == "training_start" and rec.events[-1] == "training_end"
    assert rec.events.count("step") == 40
    assert rec.events[1:4] == ["rollout_start", "step", "rollout_end"]
    assert {"total_timesteps", "new_obs", "rewards", "dones", "infos", "actions"} <= rec.local_keys


def test_callback_returning_false_stops_after_that_step():
    model = make_model()

    def stop_at_7(locals_, globals_):
        return locals_["self"].num_timesteps < 7

    model.learn(100, callback=stop_at_7)
    assert model.num_timesteps == 7


def test_auto_compile_decides_by_planned_updates_device_and_compiler(monkeypatch):
    from physlink_gym.agents.dreamerv3 import compile as compile_module

    cpu, many = torch.device("cpu"), compile_module.AUTO_COMPILE_UPDATES
    monkeypatch.setattr(compile_module, "cxx_compiler", lambda: "/usr/bin/g++")
    assert compile_module.auto_compile(many, cpu)
    assert not compile_module.auto_compile(many - 1, cpu)
    assert not compile_module.auto_compile(many, torch.device("meta"))  # accelerators: not unasked
    monkeypatch.setattr(compile_module, "cxx_compiler", lambda: None)
    assert not compile_module.auto_compile(10 * many, cpu)


@pytest.mark.parametrize("setting", ["auto", False, True])
def test_learn_and_fit_plan_compile_from_their_updates(setting, monkeypatch):
    # learn(total) owes (total - learning_starts) * train_ratio / (batch * length) updates;
    # fit(trajectories, n) n. "auto" decides from them; True and False are kept.
    from physlink_gym.agents.dreamerv3 import algorithm as algorithm_module

    asked = []
    monkeypatch.setattr(algorithm_module, "auto_compile",
                        lambda updates, device: asked.append(updates) or updates >= 1000)
    model = make_model(policy_kwargs={"compile": setting})
    assert model.policy.learner.compiled is (setting is True)
    model.learn(32 + 8 * 2000, callback=lambda locals_, globals_: False)  # stops at step 1
    # FAST: train_ratio 32 over 4 x 16 windows, so 16,000 steps after learning_starts owe
    # 8,000 updates; the callback stops the run before any.
    assert model.num_timesteps == 1
    assert model.policy.learner.compiled is (setting is not False)  # auto: 8,000 >= 1,000
    assert model.policy.learner.rssm.compiled is (setting is not False)
    model.learn(32 + 8 * 100, callback=lambda locals_, globals_: False)  # 400: eager again
    assert model.policy.learner.compiled is (setting is True)
    data = record_trajectories(gym.make("Pendulum-v1", max_episode_steps=40), n_episodes=1,
                               seed=0)
    model.fit(data, gradient_steps=0)  # plans too (0 updates: nothing compiles here)
    assert asked == ([8000, 400, 0] if setting == "auto" else [])
    assert model.policy.learner.compiled is (setting is True)


def test_training_runs_updates_by_train_ratio_and_logs_finite_losses(tmp_path):
    model = make_model(train_ratio=128, tensorboard_log=str(tmp_path))
    model.learn(48)
    # (48 - 32) env steps after learning_starts, 128 replayed steps each, 4 x 16 per update.
    assert model._n_updates == pytest.approx(32, abs=2)
    assert np.isfinite(model.logger.name_to_value["train/dyn_loss"])
    events = glob.glob(str(tmp_path / "DreamerV3_1" / "events.out.tfevents.*"))
    assert events, "TensorBoard run folder DreamerV3_1 was not written"


def test_invalid_transitions_never_reach_replay_training_windows():
    flag_every_5 = invariants.Invariant(
        "every5", fn=lambda t: float(t["step"] % 5 == 4), tolerance=0.5, mode="hard"
    )
    env = InvariantWrapper(gym.make("Pendulum-v1"), [flag_every_5])
    model = make_model(env)
    model.learn(60)
    replay = model.replay_buffer
    stored_valid = replay.state_dict()["valid"][0][: len(replay)]
    assert (~stored_valid).sum() >= 10
    batch = replay.sample(8, 16)
    assert np.all(batch["obs"][~batch["valid"]] == 0)


def test_predict_episode_start_equals_fresh_state_and_batches():
    model = make_model()
    model.learn(40)
    obs = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]], dtype=np.float32)
    a_fresh, s_fresh = model.predict(obs, deterministic=True)
    _, s_mid = model.predict(obs, deterministic=True)
    a_reset, s_reset = model.predict(
        obs, state=s_mid, episode_start=np.ones(2, bool), deterministic=True
    )
    np.testing.assert_array_equal(a_fresh, a_reset)
    for x, y in zip(s_fresh, s_reset, strict=True):
        np.testing.assert_array_equal(x, y)
    a_carry, _ = model.predict(
        obs, state=s_mid, episode_start=np.zeros(2, bool), deterministic=True
    )
    assert a_fresh.shape == (2, 1) and a_carry.shape == (2, 1)
    single, state = model.predict(obs[0], deterministic=True)
    assert single.shape == (1,) and state[0].shape[0] == 1
    assert np.all(np.abs(a_fresh) <= 2.0)


def test_predict_rejects_gym_api_tuple():
    model = make_model()
    obs, info = gym.make("Pendulum-v1").reset(seed=0)
    with pytest.raises(ValueError, match="mixing Gym API"):
        model.predict((obs, info))


def test_save_load_round_trip_is_exact_and_never_pickles(tmp_path):
    model = make_model(train_ratio=32)
    model.learn(40)
    path = tmp_path / "model"
    model.save(path)
    assert (tmp_path / "model.zip").exists()
    with zipfile.ZipFile(tmp_path / "model.zip") as zf:
        assert sorted(zf.namelist()) == ["metadata.json", "tensors.safetensors"]
        meta = json.loads(zf.read("metadata.json"))
    assert meta["class"] == "DreamerV3" and meta["num_timesteps"] == 40
    loaded = DreamerV3.load(path)
    assert loaded.num_timesteps == 40 and loaded.preset == "debug"
    for (k, v), (k2, v2) in zip(
        model.policy.state_dict().items(), loaded.policy.state_dict().items(), strict=True
    ):
        assert k == k2
        torch.testing.assert_close(v, v2, rtol=0, atol=0)
    obs = np.zeros((3, 3), np.float32)
    rng = torch.get_rng_state()
    a1, _ = model.predict(obs, deterministic=True)
    a2, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a1, a2)
    assert torch.equal(torch.get_rng_state(), rng)  # evaluating leaves training's RNG alone


def test_learn_continues_after_load(tmp_path):
    model = make_model(train_ratio=32)
    model.learn(40)
    model.save(tmp_path / "m.zip")
    loaded = DreamerV3.load(tmp_path / "m.zip", env=gym.make("Pendulum-v1"))
    loaded.learn(20, reset_num_timesteps=False)  # a fresh replay: 16 entries before updates
    assert loaded.num_timesteps == 60 and loaded._n_updates > model._n_updates


def test_load_rejects_other_spaces_and_garbage(tmp_path):
    model = make_model()
    model.save(tmp_path / "m.zip")
    with pytest.raises(ConfigurationError, match="spaces"):
        DreamerV3.load(tmp_path / "m.zip", env=gym.make("MountainCarContinuous-v0"))
    (tmp_path / "bad.zip").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointCorruptError):
        DreamerV3.load(tmp_path / "bad.zip")


def test_discrete_actions_and_several_envs():
    venv = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = make_model(venv)
    model.learn(41)
    assert 41 <= model.num_timesteps < 43
    actions, _ = model.predict(venv.reset())
    assert actions.shape == (2,) and set(actions.tolist()) <= {0, 1}
    mean, _ = evaluate_policy(model, venv, n_eval_episodes=2)
    assert mean > 0


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ConfigurationError, match="preset"):
        DreamerV3("MlpPolicy", "Pendulum-v1", preset="huge")
    with pytest.raises(ConfigurationError, match="learning_starts"):
        DreamerV3("MlpPolicy", "Pendulum-v1", preset="debug", learning_starts=-1)
    with pytest.raises(PhysLinkError, match="observation space"):
        DreamerV3("MlpPolicy", _image_env(), preset="debug")


def _image_env():
    class Img(gym.Env):
        observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            return self.observation_space.sample(), {}

        def step(self, action):
            return self.observation_space.sample(), 0.0, False, False, {}

    return Img()


def test_tensorboard_folder_numbering(tmp_path):
    model = make_model(tensorboard_log=str(tmp_path))
    model.learn(8)
    model.learn(8, reset_num_timesteps=False)
    assert sorted(os.listdir(tmp_path)) == ["DreamerV3_1"]
    model.learn(8)
    assert sorted(os.listdir(tmp_path)) == ["DreamerV3_1", "DreamerV3_2"]


def test_visualize_writes_the_triptych_gif(tmp_path):
    from PIL import Image

    model = make_model()
    model.learn(40)
    path = model.visualize(gym.make("Pendulum-v1"), tmp_path / "wm.gif", steps=12)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames >= 6


def test_a_custom_info_key_still_masks_flagged_transitions() -> None:
    # Regression: readers hard-coded "physlink", so info_key="pl" let every flagged transition
    # into DreamerV3's replay as valid and logged no invariant statistics.
    import gymnasium as gym

    from physlink_gym import Invariant, InvariantWrapper

    flag_all = Invariant("flag_all", lambda t: 1.0, tolerance=0.5, mode="hard")
    env = InvariantWrapper(gym.make("Pendulum-v1"), [flag_all], info_key="pl")
    model = DreamerV3("MlpPolicy", env, preset="debug", learning_starts=10_000, seed=0)
    model.learn(40)
    assert model.replay_buffer is not None
    valid = model.replay_buffer.state_dict()["valid"][0]
    assert len(valid) == 41 and valid[0] and not valid[1:].any()  # reset entry, 40 flagged
    assert model.invariant_stats.fired == {"flag_all"}  # the statistics saw the record too


class _NaNAt(gym.Wrapper):
    """Returns a NaN observation on the given steps (a blown-up simulator)."""

    def __init__(self, env: gym.Env, steps: set[int]) -> None:
        super().__init__(env)
        self.bad, self.t = steps, 0

    def step(self, action):  # type: ignore[no-untyped-def]
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        if self.t in self.bad:
            obs = np.full_like(obs, np.nan)
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize("wrapped", [False, True])
def test_nan_observations_never_crash_learning(wrapped: bool) -> None:
    # Regression: the NaN reached the recurrent policy and learn() died in torch.normal.
    from physlink_gym import InvariantWrapper, invariants

    env: gym.Env = _NaNAt(gym.make("Pendulum-v1"), {5, 6, 30})
    if wrapped:
        env = InvariantWrapper(env, [invariants.finite()])
    model = DreamerV3("MlpPolicy", env, preset="debug", learning_starts=20, batch_size=2,
                      sequence_length=8, train_ratio=32, seed=0)
    model.learn(60)
    assert model.policy.nonfinite_obs == 3
    valid = model.replay_buffer.state_dict()["valid"][0]
    assert not valid[[5, 6, 30]].any() and valid[[1, 4, 7, 29, 31]].all()
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    action, _ = model.predict(np.full(3, np.nan, np.float32), deterministic=True)
    assert np.isfinite(action).all()
