"""DreamerV3Learner: stop-gradients, masking, policy resets, fitting, metrics, checkpoints."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from physlink_gym.agents.dreamerv3 import update
from physlink_gym.agents.dreamerv3.config import make_config
from physlink_gym.agents.dreamerv3.learner import LOSS_KEYS, DreamerV3Learner
from physlink_gym.agents.dreamerv3.update import replay_returns
from physlink_gym.errors import ValidationError

OBS, ACT, B, T = 5, 2, 4, 12


# One torch thread per test (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _learner(discrete: bool = False, **overrides: object) -> DreamerV3Learner:
    torch.manual_seed(0)
    return DreamerV3Learner(make_config("debug", **overrides), OBS, ACT, discrete)


def _batch(seed: int = 0, discrete: bool = False) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[1, 7] = True
    is_terminal = torch.zeros(B, T, dtype=torch.bool)
    is_terminal[1, 6] = True
    if discrete:
        action = nn.functional.one_hot(torch.randint(0, ACT, (B, T), generator=gen), ACT).float()
    else:
        action = torch.rand(B, T, ACT, generator=gen) * 2 - 1
    action[is_first] = 0.0
    return {
        "obs": torch.randn(B, T, OBS, generator=gen) * 3,
        "action": action,
        "reward": torch.randn(B, T, generator=gen),
        "is_first": is_first,
        "is_terminal": is_terminal,
        "valid": torch.ones(B, T, dtype=torch.bool),
    }


def _grads(loss: torch.Tensor, module: nn.Module) -> float:
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return sum(float(g.abs().sum()) for g in grads if g is not None)


def _loss_parts(learner: DreamerV3Learner) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    losses, _ = learner.compute_losses(learner.prepare_batch(_batch()))
    return losses


@pytest.mark.parametrize("discrete", [False, True])
def test_actor_loss_reaches_only_the_actor(discrete: bool) -> None:
    learner = _learner(discrete)
    policy = _loss_parts(learner)["policy"]
    assert _grads(policy, learner.actor) > 0
    for module in [*learner.world_model_modules(), learner.critic]:
        assert _grads(policy, module) == 0.0, type(module).__name__


def test_world_model_loss_reaches_no_actor_or_critic() -> None:
    learner = _learner()
    losses = _loss_parts(learner)
    world = sum(losses[k] for k in ("dyn", "rep", "dec", "rew", "con"))
    assert isinstance(world, torch.Tensor)
    for module in learner.world_model_modules():
        assert _grads(world, module) > 0, type(module).__name__
    assert _grads(world, learner.actor) == 0.0
    assert _grads(world, learner.critic) == 0.0


def _randomise_value_outputs(learner: DreamerV3Learner) -> None:
    """Give the zero-initialised reward/value outputs weights so gradients pass through them."""
    with torch.no_grad():
        for head in (learner.reward_head.out, learner.critic.out, learner.slow_critic.out):
            head.weight.normal_(0.0, 0.3)


def test_critic_losses_reach_no_actor() -> None:
    learner = _learner()
    _randomise_value_outputs(learner)
    losses = _loss_parts(learner)
    assert _grads(losses["value"], learner.critic) > 0
    assert _grads(losses["value"], learner.actor) == 0.0
    for module in learner.world_model_modules():  # imagination starts from sg(posterior)
        assert _grads(losses["value"], module) == 0.0
    # The replay value loss trains the critic and, with repval_grad (reference), the encoder
    # and RSSM; never the actor.
    assert _grads(losses["repval"], learner.critic) > 0
    assert _grads(losses["repval"], learner.rssm) > 0
    assert _grads(losses["repval"], learner.actor) == 0.0
    no_grad = _learner(repval_grad=False)
    _randomise_value_outputs(no_grad)
    assert _grads(_loss_parts(no_grad)["repval"], no_grad.rssm) == 0.0


def test_slow_critic_is_not_optimised() -> None:
    learner = _learner()
    ids = {id(p) for group in learner.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in ids for p in learner.slow_critic.parameters())
    assert all(id(p) in ids for p in learner.actor.parameters())
    assert len(ids) == len(learner.trainable_parameters())


def _masked_batch(fill: float) -> dict[str, torch.Tensor]:
    batch = _batch(3)
    batch["valid"][0, 5:8] = False
    batch["valid"][2, 9:] = False
    batch["is_first"][0, 5:9] = True  # replay: is_first at and after invalid entries
    for key in ("obs", "action", "reward"):
        batch[key][~batch["valid"]] = fill
    return batch


def _all_losses(learner: DreamerV3Learner, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    torch.manual_seed(5)
    losses, _ = copy.deepcopy(learner).compute_losses(learner.prepare_batch(batch))
    return torch.stack([losses[k].detach() for k in LOSS_KEYS])


def test_invalid_entries_do_not_change_the_loss() -> None:
    learner = _learner()
    _randomise_value_outputs(learner)  # so that every loss term is active
    clean = _all_losses(learner, _masked_batch(0.0))
    huge = _all_losses(learner, _masked_batch(1e6))
    assert torch.isfinite(huge).all()
    torch.testing.assert_close(huge, clean, rtol=1e-5, atol=1e-6)
    # The same huge values on valid entries do change it (the test can fail).
    batch = _masked_batch(1e6)
    batch["valid"][:] = True
    assert not torch.allclose(_all_losses(learner, batch), clean)


@pytest.mark.parametrize("discrete", [False, True])
def test_policy_step_is_first_equals_fresh_state(discrete: bool) -> None:
    learner = _learner(discrete)
    obs = torch.randn(3, OBS)
    h, z, a = learner.initial_state(3)
    assert not (h.any() or z.any() or a.any())
    stale = (torch.randn_like(h), torch.rand_like(z), torch.rand_like(a))
    first = torch.ones(3, dtype=torch.bool)
    torch.manual_seed(2)
    act_a, state_a = learner.policy_step(obs, stale, first)
    torch.manual_seed(2)
    act_b, state_b = learner.policy_step(obs, learner.initial_state(3), first)
    torch.manual_seed(2)
    act_c, state_c = learner.policy_step(obs, learner.initial_state(3), ~first)
    torch.testing.assert_close(act_a, act_b)
    torch.testing.assert_close(act_a, act_c)
    for x, y, w in zip(state_a, state_b, state_c, strict=True):
        torch.testing.assert_close(x, y)
        torch.testing.assert_close(x, w)
    assert torch.equal(state_a[2], act_a)  # the new state's previous action is this action
    if discrete:
        assert torch.equal(act_a.sum(-1), torch.ones(3))
    else:
        assert act_a.abs().max() <= 1.0
    # Without the reset the stale state matters (the test can fail).
    _, state_d = learner.policy_step(obs, stale, ~first)
    assert not torch.allclose(state_d[0], state_a[0])


def test_policy_step_deterministic_is_the_mode() -> None:
    learner = _learner()
    obs, state = torch.randn(2, OBS), learner.initial_state(2)
    first = torch.ones(2, dtype=torch.bool)
    torch.manual_seed(0)
    a1, _ = learner.policy_step(obs, state, first, deterministic=True)
    torch.manual_seed(0)
    a2, _ = learner.policy_step(obs, state, first, deterministic=True)
    torch.manual_seed(0)
    a3, _ = learner.policy_step(obs, state, first, deterministic=False)
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)


def test_deterministic_policy_step_draws_no_random_numbers() -> None:
    # Regression: the posterior latent was sampled (and then replaced by its mode) even when
    # acting deterministically, so an evaluation callback shifted the RNG that training uses.
    learner = _learner()
    obs, state = torch.randn(2, OBS), learner.initial_state(2)
    first = torch.zeros(2, dtype=torch.bool)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a1, s1 = learner.policy_step(obs, state, first, deterministic=True)
    assert torch.equal(torch.get_rng_state(), before)
    a2, s2 = learner.policy_step(obs, state, first, deterministic=True)  # RNG not reseeded
    assert torch.equal(a1, a2) and all(torch.equal(x, y) for x, y in zip(s1, s2, strict=True))
    learner.policy_step(obs, state, first, deterministic=False)  # sampling still draws
    assert not torch.equal(torch.get_rng_state(), before)


def test_train_step_fits_a_fixed_batch() -> None:
    learner = _learner(lr=3e-3, warmup=0)
    batch = _batch()
    first = learner.train_step(batch)
    for _ in range(29):
        last = learner.train_step(batch)
    world = ("dec", "rew", "con")
    before = sum(first[f"loss/{k}"] for k in world)
    after = sum(last[f"loss/{k}"] for k in world)
    assert after < 0.7 * before, (before, after)
    assert last["loss/dec"] < first["loss/dec"]


@pytest.mark.parametrize("discrete", [False, True])
def test_metrics_are_finite_scalar_tensors(discrete: bool) -> None:
    learner = _learner(discrete)
    before = [p.detach().clone() for p in learner.slow_critic.parameters()]
    tensors = learner.train_step(_batch(discrete=discrete))
    expected = {f"loss/{k}" for k in (*LOSS_KEYS, "total")} | {
        "entropy", "return_norm/scale", "return_norm/low", "return_norm/high",
        "imag/return_mean", "grad_norm", "model/kl", "learning_rate", "skipped",
    }  # fmt: skip
    assert expected <= set(tensors)
    assert all(isinstance(v, torch.Tensor) and v.shape == () for v in tensors.values())
    metrics = {k: float(v) for k, v in tensors.items()}
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["return_norm/scale"] >= 1.0 and metrics["learning_rate"] == 0.0  # warm-up
    assert metrics["skipped"] == 0.0
    # Free bits: mean(max(KL, 1)) >= max(1, mean(KL)); the raw KL metric is the unclipped mean.
    assert metrics["loss/dyn"] >= max(1.0, metrics["model/kl"]) - 1e-5
    assert metrics["loss/dyn"] == pytest.approx(metrics["loss/rep"], rel=1e-5)
    # Slow critic: one EMA step (rate 0.02) towards the updated critic.
    for old, slow, fast in zip(
        before, learner.slow_critic.parameters(), learner.critic.parameters(), strict=True
    ):
        torch.testing.assert_close(slow, 0.98 * old + 0.02 * fast)


def test_state_dict_round_trip() -> None:
    learner = _learner(lr=1e-3, warmup=0)
    learner.train_step(_batch())
    clone = _learner(lr=1e-3, warmup=0)
    clone.load_state_dict(learner.state_dict())
    # Deep copies: an in-memory optimizer state_dict shares its tensors with the optimiser.
    clone.optimizer.load_state_dict(copy.deepcopy(learner.optimizer.state_dict()))
    obs, state = torch.randn(2, OBS), learner.initial_state(2)
    first = torch.ones(2, dtype=torch.bool)
    torch.manual_seed(0)
    m1 = learner.train_step(_batch(1))
    torch.manual_seed(0)
    m2 = clone.train_step(_batch(1))
    assert m1 == m2
    torch.manual_seed(0)
    a1, _ = learner.policy_step(obs, state, first)
    torch.manual_seed(0)
    a2, _ = clone.policy_step(obs, state, first)
    assert torch.equal(a1, a2)
    keys = learner.state_dict().keys()
    assert {"retnorm.lo", "retnorm.hi"} <= set(keys)
    assert any(k.startswith("slow_critic.") for k in keys)


def test_bad_batch_shapes_raise() -> None:
    learner = _learner()
    batch = _batch()
    batch["reward"] = batch["reward"][:, :-1]
    with pytest.raises(ValidationError, match="reward"):
        learner.train_step(batch)
    batch = _batch()
    del batch["valid"]
    with pytest.raises(ValidationError, match="valid"):
        learner.train_step(batch)
    short = {k: v[:, :1] for k, v in _batch().items()}
    with pytest.raises(ValidationError, match="T >= 2"):
        learner.train_step(short)


@pytest.mark.parametrize("discrete", [False, True])
def test_mixed_compute_is_bfloat16_only_in_imagination(discrete: bool) -> None:
    # "mixed": the world model's losses are float32 bit for bit, the imagined ones bfloat16.
    f32 = _learner(discrete)
    mixed = _learner(discrete, compute_dtype="mixed")
    mixed.load_state_dict(f32.state_dict())
    data = f32.prepare_batch(_batch(discrete=discrete))
    noise = update.draw_noise(f32, B, T)
    ref, _ = f32.compute_losses(data, noise)
    got, _ = mixed.compute_losses(data, noise)
    for key in ("dyn", "rep", "dec", "rew", "con"):
        assert torch.equal(got[key], ref[key]), key
    assert not torch.equal(got["value"], ref["value"])  # computed in bfloat16
    torch.testing.assert_close(got["value"], ref["value"], rtol=0.01, atol=0.0)  # seen: 0.15%
    # Head outputs and everything computed from them (decoded values, returns) stay float32,
    # as in the reference; only the products inside the networks run in bfloat16.
    with torch.no_grad():
        _, _, post, _ = update.world_model_loss(mixed, data, noise.post)
        with update._imagined_autocast(mixed, data["obs"].device):
            feats, actions = update.imagine(mixed, post, noise)
            logits = mixed.critic(feats[:2])
            _, _, ret, retnorm = update.behaviour_loss(mixed, feats, actions, data["valid"])
            value = update._decode(mixed, logits)
    assert logits.dtype == value.dtype == ret.dtype == retnorm.dtype == torch.float32
    assert torch.equal(value, update._decode(mixed, logits))  # the same outside autocast
    metrics = mixed.train_step(_batch(discrete=discrete))
    assert metrics["skipped"] == 0 and all(math.isfinite(v) for v in metrics.values())
    action, _ = mixed.policy_step(torch.randn(2, OBS), mixed.initial_state(2),
                                  torch.ones(2, dtype=torch.bool))
    assert action.dtype == torch.float32 and torch.isfinite(action).all()


def test_bfloat16_compute_runs() -> None:
    learner = _learner(compute_dtype="bfloat16")
    metrics = learner.train_step(_batch())
    assert all(math.isfinite(v) for v in metrics.values())
    action, state = learner.policy_step(
        torch.randn(2, OBS), learner.initial_state(2), torch.ones(2, dtype=torch.bool)
    )
    assert action.dtype == torch.float32 and state[0].dtype == torch.float32


def test_replay_returns_cut_at_episode_ends() -> None:
    learner = _learner()
    data = learner.prepare_batch(_batch())  # row 1: terminal at t=6, new episode at t=7
    boot = torch.randn(B, T)
    disc, lam = 0.9, 0.8
    ret, weight = replay_returns(data, boot, disc, lam)
    r = data["reward"]
    assert ret.shape == weight.shape == (B, T - 1)
    assert weight[1, 6] == 0 and weight[1, 5] == 1 and weight[0].eq(1).all()
    # The step before the terminal one: the reward, and no bootstrap after termination.
    torch.testing.assert_close(ret[1, 5], r[1, 6])
    # Two steps before: one lambda step into it.
    expected = r[1, 5] + disc * ((1 - lam) * boot[1, 5] + lam * ret[1, 5])
    torch.testing.assert_close(ret[1, 4], expected)
    # Nothing from the next episode leaks into the returns before the boundary.
    data2 = dict(data)
    data2["reward"] = data["reward"].clone()
    data2["reward"][1, 7:] += 100.0
    boot2 = boot.clone()
    boot2[1, 7:] -= 50.0
    ret2, _ = replay_returns(data2, boot2, disc, lam)
    torch.testing.assert_close(ret2[1, :6], ret[1, :6])
    assert not torch.allclose(ret2[1, 7:], ret[1, 7:])
    # Row 0 has no boundary: the last return is reward plus the discounted bootstrap.
    torch.testing.assert_close(ret[0, -1], r[0, -1] + disc * boot[0, -1])
