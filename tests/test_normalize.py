"""Golden-number tests for physlink_gym.agents.dreamerv3.normalize."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from physlink_gym.agents.dreamerv3.normalize import ReturnNormalizer, ema_update
from physlink_gym.errors import ConfigurationError, ValidationError


def test_percentile_ema_golden() -> None:
    norm = ReturnNormalizer()  # rate 0.01, 5th / 95th percentile, limit 1
    norm.update(torch.arange(101.0).reshape(-1, 1))  # percentiles 5 and 95
    assert norm.lo.item() == pytest.approx(0.05) and norm.hi.item() == pytest.approx(0.95)
    assert norm.scale().item() == 1.0  # 0.9 < limit
    norm.update(torch.arange(101.0) * 10.0)  # percentiles 50 and 950
    assert norm.lo.item() == pytest.approx(0.99 * 0.05 + 0.01 * 50.0)  # 0.5495
    assert norm.hi.item() == pytest.approx(0.99 * 0.95 + 0.01 * 950.0)  # 10.4405
    assert norm.scale().item() == pytest.approx(10.4405 - 0.5495)
    assert norm.offset().item() == pytest.approx(0.5495)


def test_linear_interpolation_and_limit() -> None:
    norm = ReturnNormalizer(rate=1.0)
    norm.update(torch.tensor([3.0, 0.0, 2.0, 1.0]))
    # Linear interpolation at position q * (n - 1): 0.05 * 3 = 0.15 and 0.95 * 3 = 2.85.
    assert norm.lo.item() == pytest.approx(0.15) and norm.hi.item() == pytest.approx(2.85)
    assert norm.scale().item() == pytest.approx(2.7)
    norm.update(torch.tensor([0.0, 0.1]))
    assert norm.scale().item() == 1.0
    small = ReturnNormalizer(rate=1.0, limit=0.01)
    small.update(torch.tensor([0.0, 0.1]))
    assert small.scale().item() == pytest.approx(0.09)


def test_debias_option_matches_reference_formula() -> None:
    norm = ReturnNormalizer(debias=True)
    norm.update(torch.arange(101.0))
    # corr = 0.01 after one update -> statistics divided by max(rate, corr) = 0.01.
    assert norm.offset().item() == pytest.approx(5.0) and norm.scale().item() == pytest.approx(90)
    norm.update(torch.arange(101.0))
    assert norm.offset().item() == pytest.approx(5.0)


def test_state_dict_round_trip_and_validation() -> None:
    norm = ReturnNormalizer()
    norm.update(torch.randn(64) * 30)
    state = norm.state_dict()
    assert set(state) == {"lo", "hi", "corr"}
    other = ReturnNormalizer()
    other.load_state_dict(state)
    assert torch.equal(other.scale(), norm.scale())
    with pytest.raises(ValidationError):
        norm.update(torch.zeros(0))
    with pytest.raises(ConfigurationError):
        ReturnNormalizer(low=95.0, high=5.0)


def test_ema_update_golden() -> None:
    source = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    target = copy.deepcopy(source)
    with torch.no_grad():
        for p in source.parameters():
            p.fill_(1.0)
        for p in target.parameters():
            p.fill_(0.0)
    ema_update(target, source, rate=0.02)
    for p in target.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.02))
        assert p.requires_grad and p.grad is None
    ema_update(target, source)
    for p in target.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.98 * 0.02 + 0.02))
    ema_update(target, source, rate=1.0)
    for p, q in zip(target.parameters(), source.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValidationError):
        ema_update(nn.Linear(3, 3), source)
    with pytest.raises(ConfigurationError):
        ema_update(target, source, rate=0.0)
