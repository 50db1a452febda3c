"""Safe DreamerV3 checkpoints: SB3's save/load API, never a pickle, clear errors."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch

from physlink_gym import DreamerV3, PhysLinkError
from physlink_gym import checkpoint as checkpoint_module
from physlink_gym.errors import (
    CheckpointCorruptError,
    CheckpointVersionError,
    ConfigurationError,
)

NO_UPDATES = dict(
    preset="debug", learning_starts=10**6, batch_size=4, sequence_length=16, train_ratio=64,
    seed=0, buffer_size=4096,
)  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model"
    model = DreamerV3("MlpPolicy", "Pendulum-v1", **NO_UPDATES)
    model.learn(12)
    model.save(path)
    return model, path.with_suffix(".zip")


def rewrite(src, dst, metadata=None, members=None):
    with zipfile.ZipFile(src) as zf:
        content = {name: zf.read(name) for name in zf.namelist()}
    if metadata is not None:
        meta = json.loads(content["metadata.json"])
        meta.update(metadata)
        content["metadata.json"] = json.dumps(meta).encode()
    content.update(members or {})
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in content.items():
            zf.writestr(name, data)
    return dst


def test_path_without_suffix_gets_zip_and_metadata_is_complete(saved):
    model, path = saved
    assert path.exists() and path.suffix == ".zip"
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("metadata.json"))
    assert meta["physlink_gym_version"] == checkpoint_module.__version__
    assert meta["class"] == "DreamerV3" and meta["num_timesteps"] == 12
    assert meta["config"]["deter"] == model.config.deter
    assert DreamerV3.load(path.with_suffix("")).num_timesteps == 12  # load finds the .zip too


class Bomb:
    def __reduce__(self):
        return (open, (os.environ["BOMB_PATH"], "w"))


def test_a_smuggled_pickle_never_runs(saved, tmp_path, monkeypatch):
    _, path = saved
    marker = tmp_path / "pwned"
    monkeypatch.setenv("BOMB_PATH", str(marker))
    payload = pickle.dumps(Bomb())
    sb3_like = tmp_path / "sb3.zip"
    with zipfile.ZipFile(sb3_like, "w") as zf:
        zf.writestr("data", "{}")
        zf.writestr("policy.pth", payload)
        zf.writestr("pytorch_variables.pth", payload)
    attacks = [
        sb3_like,
        rewrite(path, tmp_path / "extra.zip", members={"evil.pkl": payload}),
        rewrite(path, tmp_path / "swap.zip", members={"tensors.safetensors": payload}),
    ]
    for attack in attacks:
        with pytest.raises(CheckpointCorruptError):
            DreamerV3.load(attack)
    with pytest.raises(CheckpointCorruptError, match="Stable-Baselines3"):
        DreamerV3.load(sb3_like)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "no_metadata_keys"])
def test_damaged_files_raise_checkpoint_corrupt_error(saved, tmp_path, damage):
    _, path = saved
    bad = tmp_path / "bad.zip"
    raw = path.read_bytes()
    if damage == "empty":
        bad.write_bytes(b"")
    elif damage == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        bad.write_bytes(os.urandom(4096))
    else:
        tensors, _ = checkpoint_module.load_checkpoint(path)
        checkpoint_module.save_checkpoint(bad, tensors, {"class": "DreamerV3"})
    with pytest.raises(CheckpointCorruptError):
        DreamerV3.load(bad)


def test_other_major_minor_version_raises_version_error(saved, tmp_path):
    _, path = saved
    with pytest.raises(CheckpointVersionError):
        DreamerV3.load(rewrite(path, tmp_path / "v.zip", {"physlink_gym_version": "99.3.0"}))


def test_other_algorithm_or_space_raises_a_clear_error(saved, tmp_path):
    _, path = saved
    with pytest.raises(PhysLinkError, match="PPO"):
        DreamerV3.load(rewrite(path, tmp_path / "ppo.zip", {"class": "PPO"}))
    with pytest.raises(PhysLinkError, match="spaces"):
        DreamerV3.load(path, env=gym.make("CartPole-v1"))


def test_a_failed_save_leaves_the_previous_checkpoint_intact(saved, tmp_path, monkeypatch):
    model, _ = saved
    path = tmp_path / "m.zip"
    model.save(path)
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zip"]  # no temporary file left
    assert DreamerV3.load(path).num_timesteps == 12


def test_save_exclude_include_and_load_custom_objects(saved, tmp_path):
    model, _ = saved
    model.save(tmp_path / "ex", exclude=["learning_starts"])
    assert DreamerV3.load(tmp_path / "ex").learning_starts == 1024  # the default again
    model.save(tmp_path / "in", exclude=["learning_starts"], include=["learning_starts"])
    assert DreamerV3.load(tmp_path / "in").learning_starts == 10**6
    loaded = DreamerV3.load(tmp_path / "in", custom_objects={"learning_starts": 7})
    assert loaded.learning_starts == 7


def test_get_and_set_parameters_and_their_errors(saved):
    model, path = saved
    other = DreamerV3("MlpPolicy", "Pendulum-v1", **{**NO_UPDATES, "seed": 5})
    key = next(iter(model.policy.state_dict()))
    assert not torch.equal(other.policy.state_dict()[key], model.policy.state_dict()[key])
    params = model.get_parameters()
    assert set(params) == {"policy", "policy.optimizer"}
    other.set_parameters(params)
    torch.testing.assert_close(other.policy.state_dict()[key], model.policy.state_dict()[key])
    other.set_parameters(str(path))  # from a checkpoint file
    with pytest.raises(ValueError, match="invalid object name"):
        other.set_parameters({"bogus": {}})
    with pytest.raises(ValueError, match="do not match"):
        other.set_parameters({"policy": params["policy"]}, exact_match=True)
    other.set_parameters({"policy": params["policy"]}, exact_match=False)
    partial = dict(list(params["policy"].items())[:-1])
    with pytest.raises(PhysLinkError, match="in only one of"):
        other.set_parameters({"policy": partial, "policy.optimizer": params["policy.optimizer"]})


def test_replay_buffer_round_trip_is_npz_and_refuses_other_shapes(saved, tmp_path):
    model, _ = saved
    model.save_replay_buffer(tmp_path / "rb.npz")
    with np.load(tmp_path / "rb.npz", allow_pickle=False) as data:
        stored_obs = data["obs"]
    fresh = DreamerV3("MlpPolicy", "Pendulum-v1", **NO_UPDATES)
    fresh.load_replay_buffer(tmp_path / "rb.npz")
    assert len(fresh.replay_buffer) == len(model.replay_buffer) == 13
    np.testing.assert_array_equal(fresh.replay_buffer.state_dict()["obs"], stored_obs)
    cartpole = DreamerV3("MlpPolicy", "CartPole-v1", **NO_UPDATES)
    with pytest.raises(PhysLinkError, match="replay"):
        cartpole.load_replay_buffer(tmp_path / "rb.npz")
    (tmp_path / "junk.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointCorruptError):
        fresh.load_replay_buffer(tmp_path / "junk.pkl")


def test_custom_objects_replace_only_stored_keys_like_sb3(saved, tmp_path):
    model, path = saved
    # What rl_zoo3 enjoy passes, plus a key no checkpoint stores.
    zoo_objects = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0,
                   "clip_range": lambda _: 0.0, "not_an_attribute": 1}
    loaded = DreamerV3.load(path, custom_objects=zoo_objects)
    assert loaded.learning_rate == 0.0 and loaded.lr_schedule(1.0) == 0.0
    assert not hasattr(loaded, "clip_range") and not hasattr(loaded, "not_an_attribute")
    assert loaded.config.lr == model.config.lr > 0  # the validated config is untouched
    obs = np.zeros((1, 3), np.float32)
    action, state = loaded.predict(obs, deterministic=True)
    again, _ = loaded.predict(obs, state=state, deterministic=True)
    assert action.shape == again.shape == (1, 1)
    # The spaces are stored too, so they can be replaced (SB3 allows it for other obs bounds).
    wide = gym.spaces.Box(-10.0, 10.0, (3,), np.float32)
    widened = DreamerV3.load(path, custom_objects={"observation_space": wide})
    assert widened.observation_space == wide
    # An explicit learning rate is a config override (lr > 0 is validated); loading with the
    # zoo's learning_rate=0.0 keeps it and only zeroes the rate used for further updates.
    tuned = DreamerV3("MlpPolicy", "Pendulum-v1", **{**NO_UPDATES, "learning_rate": 1e-4})
    tuned.save(tmp_path / "tuned")
    loaded = DreamerV3.load(tmp_path / "tuned", custom_objects=zoo_objects)
    assert loaded.config.lr == 1e-4 and loaded.learning_rate == 0.0


def test_load_kwargs_that_are_config_fields_change_the_config(saved):
    _, path = saved
    loaded = DreamerV3.load(path, train_ratio=8, batch_size=3, sequence_length=12,
                            learning_rate=2e-4, policy_kwargs={"imag_horizon": 5})
    cfg = loaded.config
    assert (cfg.train_ratio, cfg.batch_size, cfg.batch_length, cfg.lr, cfg.imag_horizon) == (
        8, 3, 12, 2e-4, 5)
    assert loaded.learning_rate == 2e-4 and "train_ratio" not in vars(loaded)
    with pytest.raises(ConfigurationError, match=r"in the checkpoint.*built with these arguments"):
        DreamerV3.load(path, preset="1m")
    with pytest.raises(ConfigurationError, match="in only one of the checkpoint"):
        DreamerV3.load(path, policy_kwargs={"enc_layers": 3})  # more layers: new keys


def test_a_custom_policy_class_is_built_saved_and_required_on_load(tmp_path) -> None:
    # Regression: DreamerV3(MyPolicy, env) built the base class and the checkpoint said
    # "MlpPolicy".
    from physlink_gym.agents.dreamerv3.policy import DreamerV3Policy

    class MyPolicy(DreamerV3Policy):
        pass

    model = DreamerV3(MyPolicy, "Pendulum-v1", **NO_UPDATES)
    assert type(model.policy) is MyPolicy
    model.save(tmp_path / "custom")
    with pytest.raises(ConfigurationError, match="custom_objects"):
        DreamerV3.load(tmp_path / "custom")
    loaded = DreamerV3.load(tmp_path / "custom", custom_objects={"policy_class": MyPolicy})
    assert type(loaded.policy) is MyPolicy
    with pytest.raises(ConfigurationError, match="policy="):
        DreamerV3(dict, "Pendulum-v1", **NO_UPDATES)
