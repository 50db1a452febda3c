"""MultiDiscrete and MultiBinary actions (one categorical per dimension) and unbounded Boxes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.evaluation import evaluate_policy

from physlink_gym import DreamerV3
from physlink_gym.agents.dreamerv3.config import make_config
from physlink_gym.agents.dreamerv3.networks import Actor
from physlink_gym.agents.dreamerv3.policy import action_groups
from physlink_gym.data import record_trajectories
from physlink_gym.errors import ConfigurationError

TINY = dict(preset="debug", learning_starts=30, batch_size=2, sequence_length=8,
            train_ratio=16, seed=0)


class Bits(gym.Env):
    """A 4-d observation; the reward counts action entries equal to a fixed target."""

    def __init__(self, space: spaces.Space) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = space
        self.target = np.asarray(space.sample() * 0 + (np.asarray(getattr(space, "start", 0))),
                                 dtype=np.int64)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(4, np.float32), {}

    def step(self, action):
        if not self.action_space.contains(np.asarray(action, self.action_space.dtype)):
            raise AssertionError(f"{action!r} not in {self.action_space}")
        self.t += 1
        reward = float(np.sum(np.asarray(action) == self.target))
        return np.full(4, 0.05 * self.t, np.float32), reward, False, self.t >= 20, {}


def _reference(raw: torch.Tensor, groups: tuple[int, ...], unimix: float
               ) -> list[torch.distributions.Categorical]:
    """One torch Categorical per group: (1 - u) softmax + u / n over that group's choices."""
    width = max(groups)
    out = []
    for g, n in enumerate(groups):
        logits = raw[..., g * width: g * width + n]
        probs = (1 - unimix) * torch.softmax(logits, -1) + unimix / n
        out.append(torch.distributions.Categorical(probs=probs))
    return out


@pytest.mark.parametrize("groups", [(3, 5), (2, 2, 2), (4,)])
def test_grouped_categorical_log_prob_and_entropy_match_torch(groups) -> None:
    width = max(groups)
    actor = Actor(make_config("debug"), len(groups) * width, True, groups)
    raw = torch.randn(7, len(groups) * width, generator=torch.Generator().manual_seed(0)) * 3
    raw.requires_grad_()
    choices = torch.stack([torch.randint(0, n, (7,)) for n in groups], -1)  # [7, G]
    one_hot = torch.zeros(7, len(groups), width).scatter_(-1, choices[..., None], 1.0)
    logp, ent = actor.log_prob_entropy(raw, one_hot.flatten(-2))
    dists = _reference(raw, groups, actor.unimix)
    torch.testing.assert_close(logp, sum(d.log_prob(choices[:, g]) for g, d in enumerate(dists)))
    torch.testing.assert_close(ent, sum(d.entropy() for d in dists))
    (logp.sum() + ent.sum()).backward()
    assert raw.grad is not None and bool(torch.isfinite(raw.grad).all())
    for g, n in enumerate(groups):  # padded choices get no gradient
        assert float(raw.grad[:, g * width + n:(g + 1) * width].abs().sum()) == 0.0


def test_grouped_sampling_follows_each_groups_probabilities() -> None:
    groups = (3, 5)
    actor = Actor(make_config("debug"), 10, True, groups)
    raw = torch.tensor([[2.0, 0.0, -1.0, 9, 9, 0.5, 0.0, 1.0, -2.0, 0.3]]).expand(40_000, 10)
    sample = actor.sample(raw).reshape(-1, 2, 5)
    assert bool((sample.sum(-1) == 1).all())
    assert float(sample[:, 0, 3:].sum()) == 0.0  # the first group's padded choices: never
    for g, dist in enumerate(_reference(raw[:1], groups, actor.unimix)):
        freq = sample[:, g, : groups[g]].mean(0)
        torch.testing.assert_close(freq, dist.probs[0], atol=0.01, rtol=0.0)
    mode = actor.sample(raw[:1], deterministic=True).reshape(2, 5)
    assert mode[0].argmax() == 0 and mode[1].argmax() == 2


def test_action_groups_of_each_space() -> None:
    assert action_groups(spaces.Discrete(4)) == (4,)
    assert action_groups(spaces.MultiDiscrete([3, 5])) == (3, 5)
    assert action_groups(spaces.MultiBinary(3)) == (2, 2, 2)
    assert action_groups(spaces.Box(-1, 1, (2,))) is None
    with pytest.raises(ConfigurationError, match="RescaleAction"):
        action_groups(spaces.Box(-np.inf, np.inf, (2,)))
    with pytest.raises(ConfigurationError, match="MultiBinary"):
        action_groups(spaces.MultiBinary([2, 2]))


@pytest.mark.parametrize("space", [spaces.MultiDiscrete([3, 5]), spaces.MultiBinary(4),
                                   spaces.MultiDiscrete([2, 3], start=[1, -1])],
                         ids=["multidiscrete", "multibinary", "multidiscrete_start"])
def test_learn_predict_save_load_evaluate(space, tmp_path) -> None:
    env = Bits(space)
    model = DreamerV3("MlpPolicy", env, **TINY).learn(60)  # Bits.step checks every action
    assert model._n_updates > 0
    obs = np.zeros(4, np.float32)
    action, _ = model.predict(obs, deterministic=True)
    assert space.contains(np.asarray(action, space.dtype)) and action.shape == space.shape
    model.save(tmp_path / "m")
    loaded = DreamerV3.load(tmp_path / "m", env=Bits(space))
    assert loaded.action_space == space
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], action)
    mean, _ = evaluate_policy(loaded, Bits(space), n_eval_episodes=2, deterministic=True)
    assert np.isfinite(mean)
    data = record_trajectories(Bits(space), model, n_episodes=2, seed=0)
    loaded.fit(data, gradient_steps=2)
    assert loaded._n_updates == model._n_updates + 2


def test_an_unbounded_box_is_refused_before_sb3s_assertion() -> None:
    class Unbounded(Bits):
        def __init__(self) -> None:
            super().__init__(spaces.MultiBinary(1))
            self.action_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)

    with pytest.raises(ConfigurationError, match="infinite bounds") as info:
        DreamerV3("MlpPolicy", Unbounded(), preset="debug")
    assert "RescaleAction" in str(info.value)
