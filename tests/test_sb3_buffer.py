"""InvariantFilteredReplayBuffer: flagged transitions never enter SB3's replay buffer."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import SAC

from physlink_gym.buffers import InvariantFilteredReplayBuffer
from physlink_gym.errors import ConfigurationError, ValidationError
from physlink_gym.invariants import Invariant
from physlink_gym.wrappers import InvariantWrapper

OBS = gym.spaces.Box(-10, 10, (2,), np.float32)
ACT = gym.spaces.Box(-1, 1, (1,), np.float32)


def buffer(n_envs=1, **kw):
    return InvariantFilteredReplayBuffer(100, OBS, ACT, device="cpu", n_envs=n_envs, **kw)


def infos(*valid):
    return [{"physlink": {"valid": v}} for v in valid]


def test_mixed_vector_step_stores_only_valid_rows():
    buf = buffer(n_envs=3)
    obs = np.arange(6, dtype=np.float32).reshape(3, 2)
    act = np.array([[0.1], [0.2], [0.3]], np.float32)
    buf.add(obs, obs + 100, act, np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 0.0]),
            infos(True, False, True))
    assert (buf.size(), buf.n_added, buf.n_dropped) == (2, 2, 1)
    np.testing.assert_array_equal(buf.observations[:2, 0], obs[[0, 2]])
    np.testing.assert_array_equal(buf.next_observations[:2, 0], obs[[0, 2]] + 100)
    np.testing.assert_allclose(buf.actions[:2, 0, 0], [0.1, 0.3])
    np.testing.assert_array_equal(buf.rewards[:2, 0], [1.0, 3.0])
    assert buf.buffer_size == 100  # the full capacity, shared by all envs


def test_refuses_memory_optimisation_and_unwrapped_envs():
    with pytest.raises(ConfigurationError, match="optimize_memory_usage"):
        buffer(optimize_memory_usage=True, handle_timeout_termination=False)
    buf = buffer()
    with pytest.raises(ConfigurationError, match="InvariantWrapper"):
        buf.add(np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 1)), np.zeros(1),
                np.zeros(1), [{}])


def test_sampling_an_all_flagged_buffer_is_a_clear_error():
    buf = buffer()
    buf.add(np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 1)), np.zeros(1), np.zeros(1),
            infos(False))
    with pytest.raises(ValidationError, match="1 flagged"):
        buf.sample(4)


@pytest.fixture()
def one_torch_thread():
    # Tiny networks: extra threads only add contention (10x slower on a busy 2-core runner).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.usefixtures("one_torch_thread")
def test_sac_never_stores_flagged_transitions():
    # Flag every transition whose next angular speed is positive: about half of them.
    flag = Invariant("omega_positive", fn=lambda t: max(float(t["next_obs"][2]), 0.0),
                     tolerance=0.0, mode="hard")
    env = InvariantWrapper(gym.make("Pendulum-v1"), [flag])
    model = SAC("MlpPolicy", env, replay_buffer_class=InvariantFilteredReplayBuffer,
                learning_starts=100, batch_size=32, train_freq=4, gradient_steps=1,
                policy_kwargs={"net_arch": [16, 16]}, seed=0, device="cpu")
    model.learn(300)
    buf = model.replay_buffer
    report = env.compliance_report()
    assert isinstance(buf, InvariantFilteredReplayBuffer)
    assert buf.n_added + buf.n_dropped == 300 == report.steps
    assert buf.n_dropped == report.invalid_steps == report["omega_positive"].violations
    assert 50 < buf.n_dropped < 250
    assert buf.size() == buf.n_added
    stored_next_omega = buf.next_observations[: buf.size(), 0, 2]
    assert (stored_next_omega <= 0).all()  # not one flagged transition got in
