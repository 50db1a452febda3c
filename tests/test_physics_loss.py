"""Physics as a training signal: soft invariants on the world model's one-step predictions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from physlink_gym import DreamerV3, InvariantWrapper, invariants, register_invariant
from physlink_gym.agents.dreamerv3.physics import one_step_physics_loss, physics_terms
from physlink_gym.errors import ConfigurationError
from physlink_gym.invariants.builtin import pendulum_energy_residuals

SMALL = dict(preset="debug", learning_starts=16, batch_size=4, sequence_length=8,
             train_ratio=32, seed=0)


def pendulum(soft=True):
    mode = "soft" if soft else "hard"
    return InvariantWrapper(gym.make("Pendulum-v1", max_episode_steps=50),
                            [invariants.finite(), invariants.pendulum_energy(mode=mode)])


def test_torch_residual_matches_numpy_and_has_a_gradient():
    env = gym.make("Pendulum-v1")
    check = invariants.pendulum_energy().bind(env)
    rng = np.random.default_rng(0)
    angles = rng.uniform(-np.pi, np.pi, (2, 50))
    obs = np.stack([np.cos(angles[0]), np.sin(angles[0]), rng.uniform(-8, 8, 50)], 1)
    nxt = np.stack([np.cos(angles[1]), np.sin(angles[1]), rng.uniform(-8, 8, 50)], 1)
    action = rng.uniform(-3, 3, (50, 1))  # beyond max_torque: clipped as the env does
    expected = pendulum_energy_residuals(obs, nxt, np.clip(action[:, 0], -2, 2))
    nxt_t = torch.tensor(nxt, requires_grad=True)
    got = check.torch({"obs": torch.tensor(obs), "action": torch.tensor(action),
                       "next_obs": nxt_t})
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-12)
    got.sum().backward()
    assert nxt_t.grad is not None and torch.isfinite(nxt_t.grad).all()
    assert nxt_t.grad.abs().sum() > 0


def test_learner_actions_are_mapped_to_env_units():
    terms = physics_terms([invariants.pendulum_energy()], gym.make("Pendulum-v1"),
                          gym.spaces.Box(-2.0, 2.0, (1,)))
    units = terms.env_action(torch.tensor([[-1.0], [0.0], [0.5], [1.0]]))
    assert units.flatten().tolist() == [-2.0, 0.0, 1.0, 2.0]


def test_physics_term_trains_the_world_model_and_stops_at_actor_and_critic():
    model = DreamerV3("MlpPolicy", pendulum(), policy_kwargs={"physics_weight": 1.0}, **SMALL)
    model.learn(40)  # binds the env's soft pendulum_energy and runs updates
    learner = model.policy.learner
    assert learner.physics is not None and learner.physics.names == ["pendulum_energy"]
    batch = model.replay_buffer.sample(4, 8)
    data = learner.prepare_batch({k: torch.as_tensor(v) for k, v in batch.items()})
    post_noise = torch.rand(4, 8, learner.config.stoch)
    embed = learner.encoder(data["obs"])
    post, prior = learner.rssm.observe(embed, data["action"], data["is_first"] > 0,
                                       learner.rssm.initial(4), post_noise)
    loss, _ = one_step_physics_loss(learner, data, post.deter, prior)
    assert loss.item() > 0  # an untrained model's predictions break the energy identity
    learner.zero_grad()
    loss.backward()
    grad = {name: p.grad for name, p in learner.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0
               for n, g in grad.items() if n.startswith("decoder."))
    assert any(g is not None and g.abs().sum() > 0
               for n, g in grad.items() if n.startswith("rssm."))
    for n, g in grad.items():
        if n.startswith(("actor.", "critic.", "slow_critic.", "reward_head.", "cont_head.")):
            assert g is None or g.abs().sum() == 0, n


def test_the_update_logs_the_term_only_when_enabled():
    on = DreamerV3("MlpPolicy", pendulum(), policy_kwargs={"physics_weight": 1.0}, **SMALL)
    metrics = on.policy.learner.train_step
    on.learn(40)
    sample = on.replay_buffer.sample(4, 8)
    out = metrics({k: torch.as_tensor(v) for k, v in sample.items()})
    assert "loss/physics" in out and torch.isfinite(out["loss/physics"])
    off = DreamerV3("MlpPolicy", pendulum(), **SMALL)
    off.learn(40)
    out = off.policy.learner.train_step(
        {k: torch.as_tensor(v) for k, v in off.replay_buffer.sample(4, 8).items()})
    assert "loss/physics" not in out and off.policy.learner.physics is None


def test_non_differentiable_or_missing_soft_invariants_are_refused():
    env = pendulum()
    register_invariant(env, "upright", lambda t: abs(t["next_obs"][1]), tolerance=1.0,
                       mode="soft")
    model = DreamerV3("MlpPolicy", env, policy_kwargs={"physics_weight": 1.0}, **SMALL)
    with pytest.raises(ConfigurationError, match="upright"):
        model.learn(4)
    hard_only = DreamerV3("MlpPolicy", pendulum(soft=False),
                          policy_kwargs={"physics_weight": 1.0}, **SMALL)
    with pytest.raises(ConfigurationError, match="no soft invariant"):
        hard_only.learn(4)
    bare = DreamerV3("MlpPolicy", "Pendulum-v1", policy_kwargs={"physics_weight": 1.0}, **SMALL)
    with pytest.raises(ConfigurationError, match="set_physics_invariants"):
        bare.learn(4)
    with pytest.raises(ConfigurationError, match="physics_weight"):
        DreamerV3("MlpPolicy", "Pendulum-v1", policy_kwargs={"physics_weight": -1.0}, **SMALL)


def test_a_batch_invariant_with_a_torch_version_can_train_the_model():
    speed = invariants.batch_invariant(
        "speed", lambda b: np.abs(b["next_obs"][:, 2]), tolerance=1.0,
        torch_fn=lambda b: b["next_obs"][:, 2].abs())
    env = InvariantWrapper(gym.make("Pendulum-v1", max_episode_steps=50), [speed])
    model = DreamerV3("MlpPolicy", env, policy_kwargs={"physics_weight": 0.5}, **SMALL)
    model.learn(40)
    assert model.policy.learner.physics.names == ["speed"]
    assert model._n_updates > 0
