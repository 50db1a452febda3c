"""Golden-number and stop-gradient tests for physlink_gym.agents.dreamerv3.losses."""

from __future__ import annotations

import math

import pytest
import torch

from physlink_gym.agents.dreamerv3.distributions import categorical_kl, twohot_bins, twohot_loss
from physlink_gym.agents.dreamerv3.update import (
    bernoulli_nll,
    kl_dyn_rep,
    lambda_return,
    reinforce_actor_loss,
    symlog_mse,
    value_loss,
)
from physlink_gym.errors import ValidationError


def _no_grad(t: torch.Tensor) -> bool:
    return t.grad is None or bool((t.grad == 0).all())


# --- KL ----------------------------------------------------------------------------------------


def test_kl_free_bits_clamp() -> None:
    same = torch.randn(2, 3, 4, 5)
    dyn, rep = kl_dyn_rep(same, same.clone(), free_bits=1.0)
    assert torch.equal(dyn, torch.ones(2, 3)) and torch.equal(rep, torch.ones(2, 3))
    gen = torch.Generator().manual_seed(0)
    post = torch.randn(2, 3, 32, 4, generator=gen) * 4
    prior = torch.randn(2, 3, 32, 4, generator=gen) * 4
    dyn, rep = kl_dyn_rep(post, prior, free_bits=1.0)
    raw = categorical_kl(post, prior)
    assert bool((raw > 1.0).all())
    torch.testing.assert_close(dyn, raw)
    torch.testing.assert_close(rep, raw)
    dyn, _ = kl_dyn_rep(post, prior, free_bits=1e6)
    assert torch.equal(dyn, torch.full((2, 3), 1e6))


def test_kl_clamped_entries_get_no_gradient() -> None:
    post = torch.zeros(1, 2, 3, 4, requires_grad=True)
    prior = torch.zeros(1, 2, 3, 4)
    prior[0, 1, :, 0] = 5.0
    prior.requires_grad_()
    dyn, _ = kl_dyn_rep(post, prior, free_bits=1.0)
    assert dyn[0, 0].item() == 1.0 and dyn[0, 1].item() > 1.0
    dyn.sum().backward()
    assert prior.grad is not None
    assert bool((prior.grad[0, 0] == 0).all()) and bool((prior.grad[0, 1] != 0).any())


def test_dyn_trains_only_prior_and_rep_only_posterior() -> None:
    gen = torch.Generator().manual_seed(1)
    post = (torch.randn(2, 3, 8, 4, generator=gen) * 3).requires_grad_()
    prior = (torch.randn(2, 3, 8, 4, generator=gen) * 3).requires_grad_()
    dyn, rep = kl_dyn_rep(post, prior, free_bits=0.0)
    dyn.sum().backward(retain_graph=True)
    assert _no_grad(post) and not _no_grad(prior)
    post.grad, prior.grad = None, None
    rep.sum().backward()
    assert _no_grad(prior) and not _no_grad(post)
    torch.testing.assert_close(dyn, rep)  # same value, different gradients


# --- reconstruction / continue -----------------------------------------------------------------


def test_symlog_mse_golden_and_detached_target() -> None:
    pred = torch.tensor([[1.0, 0.0], [0.0, 0.0]], requires_grad=True)
    target = torch.tensor([[math.e - 1.0, 0.0], [-(math.e**2 - 1.0), 0.0]], requires_grad=True)
    loss = symlog_mse(pred, target)
    torch.testing.assert_close(loss, torch.tensor([0.0, 4.0]), atol=1e-6, rtol=0)
    loss.sum().backward()
    assert target.grad is None and pred.grad is not None
    with pytest.raises(ValidationError):
        symlog_mse(torch.zeros(2, 3), torch.zeros(2, 4))


def test_bernoulli_nll_golden() -> None:
    logits = torch.tensor([0.0, 2.0, -1.0])
    target = torch.tensor([1.0, 1.0, 0.25], requires_grad=True)

    def sig(v: float) -> float:
        return 1.0 / (1.0 + math.exp(-v))

    expected = [
        math.log(2.0),
        -math.log(sig(2.0)),
        -(0.25 * math.log(sig(-1.0)) + 0.75 * math.log(1.0 - sig(-1.0))),
    ]
    loss = bernoulli_nll(logits.requires_grad_(), target)
    torch.testing.assert_close(loss, torch.tensor(expected))
    loss.sum().backward()
    assert target.grad is None


# --- lambda returns ------------------------------------------------------------------------------

REW = torch.tensor([[9.0, 1.0, 2.0]], dtype=torch.float64)
CON = torch.tensor([[1.0, 0.5, 0.8]], dtype=torch.float64)
VAL = torch.tensor([[7.0, 3.0, 10.0]], dtype=torch.float64)


def test_lambda_return_three_steps_golden() -> None:
    # R_1 = r2 + 0.9 * c2 * v2 = 2 + 0.9 * 0.8 * 10 = 9.2 (R_2 = v2, so lambda does not matter)
    # R_0 = r1 + 0.9 * c1 * (0.05 * v1 + 0.95 * R_1) = 1 + 0.45 * (0.15 + 8.74) = 5.0005
    ret = lambda_return(REW, CON, VAL, discount=0.9, lam=0.95)
    torch.testing.assert_close(ret, torch.tensor([[5.0005, 9.2]], dtype=torch.float64))


def test_lambda_return_reductions() -> None:
    # lam = 1: Monte-Carlo with bootstrap at the end: R_0 = 1 + 0.45 * 9.2 = 5.14.
    ret1 = lambda_return(REW, CON, VAL, discount=0.9, lam=1.0)
    torch.testing.assert_close(ret1, torch.tensor([[5.14, 9.2]], dtype=torch.float64))
    # lam = 0: one-step TD targets r_{t+1} + d c_{t+1} v_{t+1}: R_0 = 1 + 0.45 * 3 = 2.35.
    ret0 = lambda_return(REW, CON, VAL, discount=0.9, lam=0.0)
    torch.testing.assert_close(ret0, torch.tensor([[2.35, 9.2]], dtype=torch.float64))


def _slow_lambda_return(rew, con, val, disc, lam, last=None):  # type: ignore[no-untyped-def]
    out = torch.zeros(rew.shape[0], rew.shape[1] - 1, dtype=rew.dtype)
    for b in range(rew.shape[0]):
        nxt = float(val[b, -1])
        for t in reversed(range(rew.shape[1] - 1)):
            lt = lam * (1.0 - (float(last[b, t + 1]) if last is not None else 0.0))
            mix = (1 - lt) * float(val[b, t + 1]) + lt * nxt
            nxt = float(rew[b, t + 1]) + disc * float(con[b, t + 1]) * mix
            out[b, t] = nxt
    return out


def test_lambda_return_matches_slow_reference_and_cuts_at_last() -> None:
    gen = torch.Generator().manual_seed(3)
    rew, val = torch.randn(4, 16, generator=gen), torch.randn(4, 16, generator=gen)
    con = torch.rand(4, 16, generator=gen)
    last = (torch.rand(4, 16, generator=gen) < 0.2).float()
    ret = lambda_return(rew, con, val, discount=0.997, lam=0.95)
    torch.testing.assert_close(ret, _slow_lambda_return(rew, con, val, 0.997, 0.95))
    ret = lambda_return(rew, con, val, discount=0.997, lam=0.95, last=last)
    torch.testing.assert_close(ret, _slow_lambda_return(rew, con, val, 0.997, 0.95, last))
    last3 = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    cut = lambda_return(REW, CON, VAL, discount=0.9, lam=0.95, last=last3)
    torch.testing.assert_close(cut, torch.tensor([[2.35, 9.2]], dtype=torch.float64))
    with pytest.raises(ValidationError):
        lambda_return(rew[:, :1], con[:, :1], val[:, :1], 0.9, 0.9)


# --- actor and critic ------------------------------------------------------------------------


def test_actor_loss_golden_and_stop_gradients() -> None:
    logp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    ent = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    adv = torch.tensor([[2.0, -1.0], [0.5, 3.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.5], [1.0, 0.0]], requires_grad=True)
    loss = reinforce_actor_loss(logp, ent, adv, weight, entropy_coef=0.1)
    terms = [
        -(-1.0 * 2.0 + 0.1 * 1.0) * 1.0,
        -(-2.0 * -1.0 + 0.1 * 2.0) * 0.5,
        -(-0.5 * 0.5 + 0.1 * 3.0) * 1.0,
        0.0,
    ]
    assert loss.shape == () and loss.item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    loss.backward()
    assert adv.grad is None and weight.grad is None
    assert logp.grad is not None and ent.grad is not None
    torch.testing.assert_close(logp.grad, -(adv * weight).detach() / 4)
    torch.testing.assert_close(ent.grad, -0.1 * weight.detach() / 4)


def test_value_loss_targets_detached_and_golden() -> None:
    bins = twohot_bins()
    logits = torch.zeros(2, 3, 255, requires_grad=True)
    target = torch.randn(2, 3, requires_grad=True)
    slow = torch.randn(2, 3, requires_grad=True)
    weight = torch.tensor([[1.0, 0.5, 0.0], [2.0, 1.0, 1.0]], requires_grad=True)
    loss = value_loss(logits, target, slow, bins, weight, slow_reg=1.0)
    torch.testing.assert_close(loss, 2 * math.log(255) * weight.detach())
    loss.sum().backward()
    assert target.grad is None and slow.grad is None and weight.grad is None
    assert logits.grad is not None and bool((logits.grad != 0).any())
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 255, generator=gen)
    ones = torch.ones(2, 3)
    expected = twohot_loss(logits, target, bins) + 0.3 * twohot_loss(logits, slow, bins)
    got = value_loss(logits, target, slow, bins, ones, slow_reg=0.3)
    torch.testing.assert_close(got, expected.detach())
