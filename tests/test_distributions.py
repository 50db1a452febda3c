"""Golden-number tests for physlink_gym.agents.dreamerv3.distributions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from physlink_gym.agents.dreamerv3.distributions import (
    bounded_normal,
    categorical_entropy,
    categorical_kl,
    sample_onehot_st,
    symexp,
    symlog,
    twohot_bins,
    twohot_encode,
    twohot_loss,
    twohot_mean,
    unimix_logits,
)
from physlink_gym.errors import ValidationError

SMALL_BINS = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])


# --- symlog / symexp -------------------------------------------------------------------------


def test_symlog_symexp_golden() -> None:
    x = torch.tensor([0.0, math.e - 1.0, -(math.e**2 - 1.0), 1e6], dtype=torch.float64)
    expected = torch.tensor([0.0, 1.0, -2.0, math.log(1e6 + 1.0)], dtype=torch.float64)
    torch.testing.assert_close(symlog(x), expected)
    torch.testing.assert_close(symexp(expected), x)


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=-1e8, max_value=1e8, allow_nan=False))
def test_symexp_inverts_symlog(value: float) -> None:
    x = torch.tensor([value], dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(symlog(symexp(symlog(x))), symlog(x), rtol=1e-12, atol=1e-12)


# --- two-hot ---------------------------------------------------------------------------------


def test_bins_are_symexp_linspace_and_exactly_symmetric() -> None:
    bins = twohot_bins()
    assert bins.shape == (255,) and bins.dtype == torch.float32
    assert bins[127].item() == 0.0
    assert torch.equal(bins, -bins.flip(0))
    assert bool((bins[1:] > bins[:-1]).all())
    expected = symexp(torch.linspace(-20.0, 20.0, 255, dtype=torch.float64)).float()
    torch.testing.assert_close(bins, expected, rtol=1e-6, atol=1e-12)
    assert bins[-1].item() == pytest.approx(math.expm1(20.0), rel=1e-6)
    with pytest.raises(ValidationError):
        twohot_bins(1)


def test_twohot_midpoint_splits_half_half_and_on_bin_gives_one() -> None:
    enc = twohot_encode(torch.tensor([0.5, -1.0, 1.75]), SMALL_BINS)
    expected = torch.tensor(
        [[0, 0, 0.5, 0.5, 0], [0, 1.0, 0, 0, 0], [0, 0, 0, 0.25, 0.75]], dtype=torch.float32
    )
    torch.testing.assert_close(enc, expected, rtol=0, atol=0)
    bins = twohot_bins()
    mid = 0.5 * (bins[130] + bins[131])
    enc = twohot_encode(mid[None], bins)[0]
    torch.testing.assert_close(enc[130:132], torch.tensor([0.5, 0.5]), rtol=0, atol=1e-6)
    assert enc.sum().item() == pytest.approx(1.0)
    on_bin = twohot_encode(bins[[0, 127, 200, 254]], bins)
    assert on_bin[[0, 1, 2, 3], [0, 127, 200, 254]].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_twohot_out_of_range_clips_to_end_bins() -> None:
    enc = twohot_encode(torch.tensor([-3.0, 7.0, -1e30]), SMALL_BINS)
    assert enc[0].tolist() == [1.0, 0, 0, 0, 0]
    assert enc[1].tolist() == [0, 0, 0, 0, 1.0]
    assert enc[2].tolist() == [1.0, 0, 0, 0, 0]


def test_zero_and_symmetric_logits_decode_to_exactly_zero() -> None:
    bins = twohot_bins()
    assert torch.equal(twohot_mean(torch.zeros(4, 7, 255), bins), torch.zeros(4, 7))
    half = torch.randn(3, 127, generator=torch.Generator().manual_seed(0))
    symmetric = torch.cat([half, torch.randn(3, 1), half.flip(-1)], -1)
    assert torch.equal(twohot_mean(symmetric, bins), torch.zeros(3))
    even_bins = twohot_bins(6, -3.0, 3.0)
    assert torch.equal(twohot_mean(torch.zeros(2, 6), even_bins), torch.zeros(2))


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32))
def test_encode_decode_round_trip(value: float) -> None:
    bins = twohot_bins(dtype=torch.float64)
    x = torch.tensor([value], dtype=torch.float64)
    enc = twohot_encode(x, bins)
    assert enc.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert int((enc > 0).sum()) <= 2
    torch.testing.assert_close((enc * bins).sum(-1), x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(twohot_mean(torch.log(enc), bins), x, rtol=1e-9, atol=1e-9)


def test_twohot_loss_golden_and_dense_definition() -> None:
    # logits k = 0..4 over bins -2..2; target 0.25 -> weight 0.75 on bin 2, 0.25 on bin 3.
    logits = torch.arange(5.0, dtype=torch.float64)
    lse = math.log(sum(math.exp(k) for k in range(5)))
    expected = -(0.75 * (2 - lse) + 0.25 * (3 - lse))
    loss = twohot_loss(logits, torch.tensor(0.25, dtype=torch.float64), SMALL_BINS.double())
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert twohot_loss(torch.zeros(255), torch.tensor(3.0), twohot_bins()).item() == (
        pytest.approx(math.log(255), rel=1e-6)
    )
    gen = torch.Generator().manual_seed(1)
    bins = twohot_bins()
    logits = torch.randn(4, 6, 255, generator=gen, requires_grad=True)
    target = (torch.randn(4, 6, generator=gen) * 50).requires_grad_()
    dense = -(twohot_encode(target, bins) * torch.log_softmax(logits, -1)).sum(-1)
    loss = twohot_loss(logits, target, bins)
    torch.testing.assert_close(loss, dense)
    loss.sum().backward()
    assert target.grad is None and logits.grad is not None
    with pytest.raises(ValidationError):
        twohot_loss(torch.zeros(3, 5), torch.zeros(4), SMALL_BINS)


# --- categoricals ----------------------------------------------------------------------------


def test_unimix_floor_and_golden() -> None:
    probs = unimix_logits(torch.tensor([0.0, -1e9]), 0.01).exp()
    torch.testing.assert_close(probs, torch.tensor([0.995, 0.005]))
    logits = torch.randn(64, 32, 16) * 30
    mixed = unimix_logits(logits, 0.01).exp()
    assert bool((mixed >= 0.01 / 16 * (1 - 1e-5)).all())
    torch.testing.assert_close(mixed.sum(-1), torch.ones(64, 32))
    assert unimix_logits(logits, 0.0) is logits


def test_straight_through_sample() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 32, 4, generator=gen, requires_grad=True)
    sample = sample_onehot_st(logits, generator=gen)
    assert set(sample.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(sample.detach().sum(-1), torch.ones(8, 32))
    weights = torch.randn(8, 32, 4, generator=gen)
    (sample * weights).sum().backward()
    expected = torch.autograd.grad((torch.softmax(logits, -1) * weights).sum(), logits)[0]
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad, expected)
    probs = torch.tensor([0.1, 0.2, 0.7])
    draws = sample_onehot_st(probs.log().expand(20000, 3), generator=gen)
    torch.testing.assert_close(draws.mean(0), probs, atol=0.015, rtol=0)


def test_categorical_kl_golden() -> None:
    lhs = torch.tensor([[0.5, 0.5], [0.5, 0.5]]).log()
    rhs = torch.tensor([[0.25, 0.75], [0.5, 0.5]]).log()
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert categorical_kl(lhs, rhs).item() == pytest.approx(expected, rel=1e-6)
    assert categorical_kl(lhs[None], rhs[None]).shape == (1,)
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(3, 5, 32, 4, generator=gen), torch.randn(3, 5, 32, 4, generator=gen)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=a), torch.distributions.Categorical(logits=b)
    ).sum(-1)
    torch.testing.assert_close(categorical_kl(a, b), ref)
    assert categorical_kl(a, a).abs().max().item() < 1e-6
    with pytest.raises(ValidationError):
        categorical_kl(a, b[..., :3])


def test_categorical_entropy_golden() -> None:
    assert categorical_entropy(torch.zeros(7)).item() == pytest.approx(math.log(7), rel=1e-6)
    p = torch.tensor([0.2, 0.8])
    expected = -(0.2 * math.log(0.2) + 0.8 * math.log(0.8))
    assert categorical_entropy(p.log()).item() == pytest.approx(expected, rel=1e-6)


# --- bounded normal --------------------------------------------------------------------------


def test_bounded_normal_golden_and_bounds() -> None:
    dist = bounded_normal(torch.zeros(5, 3 * 2))
    std0 = 0.9 * (1.0 / (1.0 + math.exp(-2.0))) + 0.1
    torch.testing.assert_close(dist.mean, torch.zeros(5, 3))
    torch.testing.assert_close(dist.stddev, torch.full((5, 3), std0))
    expected_ent = 3 * (0.5 * math.log(2 * math.pi * math.e * std0**2))
    torch.testing.assert_close(dist.entropy(), torch.full((5,), expected_ent))
    assert dist.log_prob(torch.zeros(5, 3)).shape == (5,)
    extreme = bounded_normal(torch.tensor([[50.0, -50.0, 1e4, -1e4], [-3.0, 3.0, 0.5, -0.5]]))
    assert bool((extreme.mean.abs() <= 1.0).all())
    assert bool(((extreme.stddev >= 0.1) & (extreme.stddev <= 1.0)).all())
    torch.testing.assert_close(extreme.stddev[0], torch.tensor([1.0, 0.1]))
    moderate = bounded_normal(torch.randn(100, 8).clamp(-4.0, 4.0))
    assert bool((moderate.mean.abs() < 1.0).all())
    with pytest.raises(ValidationError):
        bounded_normal(torch.zeros(2, 3))
