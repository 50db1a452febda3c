"""Exact resume of DreamerV3 from a checkpoint, and checkpoints that survive a SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import gymnasium as gym
import numpy as np
import torch

from physlink_gym import DreamerV3

# ~1 update per env step after 24 warm-up steps (train_ratio 64 = 4 x 16 replayed steps).
RESUME = dict(preset="debug", learning_starts=24, batch_size=4, sequence_length=16,
              train_ratio=64, seed=0, buffer_size=4096)  # fmt: skip


def assert_same_state(a, b):
    for (key, x), y in zip(a.policy.state_dict().items(), b.policy.state_dict().values(),
                           strict=True):  # fmt: skip
        assert torch.equal(x, y), key
    opt_a, opt_b = a.policy.optimizer.state_dict(), b.policy.optimizer.state_dict()
    for state_a, state_b in zip(opt_a["state"].values(), opt_b["state"].values(), strict=True):
        for name in state_a:
            assert torch.equal(torch.as_tensor(state_a[name]), torch.as_tensor(state_b[name]))


def test_save_stop_load_continue_equals_uninterrupted(tmp_path):
    interrupted = DreamerV3("MlpPolicy", "Pendulum-v1", **RESUME).learn(32)
    interrupted.save(tmp_path / "model")
    interrupted.save_replay_buffer(tmp_path / "replay.npz")
    env = interrupted.get_env()  # the simulator state is the one thing a file cannot hold
    del interrupted
    torch.manual_seed(123)  # whatever happens in between must not matter
    np.random.seed(123)
    resumed = DreamerV3.load(tmp_path / "model", env=env, force_reset=False)
    resumed.load_replay_buffer(tmp_path / "replay.npz")
    resumed.learn(8, reset_num_timesteps=False)

    straight = DreamerV3("MlpPolicy", "Pendulum-v1", **RESUME).learn(40)
    assert resumed.num_timesteps == straight.num_timesteps == 40
    assert resumed._n_updates == straight._n_updates == 16
    assert_same_state(resumed, straight)
    for key in ("obs", "action", "reward", "is_first"):
        np.testing.assert_array_equal(
            resumed.replay_buffer.state_dict()[key], straight.replay_buffer.state_dict()[key]
        )


def test_load_with_a_fresh_env_restarts_the_episode(tmp_path):
    model = DreamerV3("MlpPolicy", "Pendulum-v1", **{**RESUME, "learning_starts": 10**6})
    model.learn(10)
    model.save(tmp_path / "m")
    model.save_replay_buffer(tmp_path / "rb.npz")
    loaded = DreamerV3.load(tmp_path / "m", env=model.get_env())  # force_reset=True
    loaded.load_replay_buffer(tmp_path / "rb.npz")
    loaded.learn(3, reset_num_timesteps=False)
    first = loaded.replay_buffer.state_dict()["is_first"][0]
    assert first.tolist() == [True] + [False] * 10 + [True] + [False] * 3


SCRIPT = """
import torch
torch.set_num_threads(1)
from stable_baselines3.common.callbacks import CheckpointCallback
from physlink_gym import DreamerV3
model = DreamerV3("MlpPolicy", "Pendulum-v1", preset="debug", learning_starts=10**9,
                  batch_size=4, sequence_length=16, seed=0, buffer_size=20000)
print("started", flush=True)
model.learn(10**7, callback=CheckpointCallback(5, {path!r}, save_replay_buffer=True))
"""


def _checkpoints(folder):
    if not folder.exists():
        return []
    steps = []
    for name in os.listdir(folder):
        match = re.fullmatch(r"rl_model_(\d+)_steps\.zip", name)
        if match:
            steps.append(int(match.group(1)))
    return sorted(steps)


def test_sigkill_mid_run_leaves_loadable_checkpoints(tmp_path):
    folder = tmp_path / "ckpt"
    script = textwrap.dedent(SCRIPT.format(path=str(folder)))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(_checkpoints(folder)) < 6:
            assert proc.poll() is None, "training subprocess died"
            time.sleep(0.05)
        time.sleep(0.137)  # land somewhere inside the save cycle
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    steps = _checkpoints(folder)
    assert len(steps) >= 6
    for step in steps:  # every file where a checkpoint is expected is complete
        assert DreamerV3.load(folder / f"rl_model_{step}_steps.zip").num_timesteps == step
    # Only hidden ".*.tmp" files can be half-written; none is named like a checkpoint.
    leftovers = [n for n in os.listdir(folder) if not n.startswith("rl_model_")]
    assert all(n.startswith(".") and n.endswith(".tmp") for n in leftovers)
    # The last complete pair (model + replay) loads and training continues from it.
    last = max(s for s in steps if (folder / f"rl_model_replay_buffer_{s}_steps.pkl").exists())
    model = DreamerV3.load(folder / f"rl_model_{last}_steps.zip", env=gym.make("Pendulum-v1"))
    model.load_replay_buffer(folder / f"rl_model_replay_buffer_{last}_steps.pkl")
    assert len(model.replay_buffer) == last + 1 + last // 200  # one reset entry per episode
    model.learn(5, reset_num_timesteps=False)
    assert model.num_timesteps == last + 5


def test_acting_without_mode_switches_takes_the_same_actions(monkeypatch):
    """The collection loop sets the learner's train/eval mode only when it changes (setting it
    walks every module); the actions, replay and weights equal those of a path that switches
    the mode around every action."""
    from physlink_gym.agents.dreamerv3.policy import DreamerV3Policy

    lean = DreamerV3("MlpPolicy", "Pendulum-v1", **RESUME).learn(48)
    act = DreamerV3Policy.act
    switches = []

    def switching_act(self, *args, **kwargs):
        self.learner.train()  # so that act() switches to eval mode, as it once did every step
        switches.append(1)
        return act(self, *args, **kwargs)

    monkeypatch.setattr(DreamerV3Policy, "act", switching_act)
    always = DreamerV3("MlpPolicy", "Pendulum-v1", **RESUME).learn(48)
    assert len(switches) == 48
    assert_same_state(lean, always)
    for key, value in lean.replay_buffer.state_dict().items():
        np.testing.assert_array_equal(value, always.replay_buffer.state_dict()[key], err_msg=key)
