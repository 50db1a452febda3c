"""Tests for the LaProp optimiser against hand-derived numbers and a slow reference chain."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from physlink_gym.agents.dreamerv3.optim import LaProp
from physlink_gym.errors import ConfigurationError


class SlowChain:
    """Literal per-tensor transcription of the reference optax chain (float64 scalars).

    clip_by_agc -> scale_by_rms(b2, eps) -> scale_by_momentum(b1) -> -schedule(count) * update,
    schedule = linear ramp 0 -> lr over ``warmup`` counts, evaluated before the increment.
    """

    def __init__(self, params, lr, b1, b2, eps, agc, pmin, warmup):  # type: ignore[no-untyped-def]
        self.params = list(params)
        self.hp = (lr, b1, b2, eps, agc, pmin, warmup)
        self.nu = [torch.zeros_like(p, dtype=torch.float64) for p in self.params]
        self.mu = [torch.zeros_like(p, dtype=torch.float64) for p in self.params]
        self.count = 0

    @torch.no_grad()
    def step(self, grads):  # type: ignore[no-untyped-def]
        lr, b1, b2, eps, agc, pmin, warmup = self.hp
        self.count += 1
        sched = lr * min(self.count - 1, warmup) / warmup if warmup else lr
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            g = g.double()
            if agc:
                upper = agc * max(pmin, float(p.double().norm()))
                g = g / max(1.0, float(g.norm()) / upper)
            self.nu[i] = b2 * self.nu[i] + (1 - b2) * g * g
            nu_hat = self.nu[i] / (1 - b2**self.count)
            u = g / (torch.sqrt(nu_hat) + eps)
            self.mu[i] = b1 * self.mu[i] + (1 - b1) * u
            mu_hat = self.mu[i] / (1 - b1**self.count)
            p.copy_((p.double() - sched * mu_hat).to(p.dtype))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.SiLU(), nn.Linear(4, 3))
    with torch.no_grad():
        model[2].bias.zero_()  # norm 0: the AGC bound uses pmin
    return model


def _grads(model: nn.Module, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen) * 3 for p in model.parameters()]


def _set(model: nn.Module, grads: list[torch.Tensor]) -> None:
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()


@pytest.mark.parametrize("warmup", [0, 2])
def test_matches_slow_reference_chain(warmup: int) -> None:
    model = _model()
    ref_model = copy.deepcopy(model)
    opt = LaProp(model.parameters(), lr=1e-2, warmup=warmup)
    ref = SlowChain(ref_model.parameters(), 1e-2, 0.9, 0.999, 1e-20, 0.3, 1e-3, warmup)
    for seed in range(5):
        grads = _grads(model, seed)
        _set(model, grads)
        opt.step()
        ref.step(grads)
        for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
        expected_norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
        assert opt.last_grad_norm is not None
        assert opt.last_grad_norm.item() == pytest.approx(expected_norm, rel=1e-6)


def test_one_and_two_steps_by_hand() -> None:
    w = nn.Parameter(torch.tensor([0.0], dtype=torch.float64))
    opt = LaProp([w], lr=0.5, agc=0.0, warmup=0)
    w.grad = torch.tensor([2.0], dtype=torch.float64)
    opt.step()
    # nu = 0.001 * 4, nu_hat = 4, u = 1; mu = 0.1, mu_hat = 1 -> w = -0.5.
    assert w.item() == pytest.approx(-0.5, rel=1e-12)
    w.grad = torch.tensor([1.0], dtype=torch.float64)
    opt.step()
    nu = 0.999 * 0.004 + 0.001 * 1.0
    u = 1.0 / math.sqrt(nu / (1 - 0.999**2))
    mu_hat = (0.9 * 0.1 + 0.1 * u) / (1 - 0.9**2)
    assert w.item() == pytest.approx(-0.5 - 0.5 * mu_hat, rel=1e-12)


def test_agc_clips_exactly_and_respects_pmin() -> None:
    big = nn.Parameter(torch.tensor([3.0, 4.0]))  # ||p|| = 5 -> bound 0.3 * 5 = 1.5
    small = nn.Parameter(torch.tensor([3.0, 4.0]))  # ||g|| = 0.5 < 1.5: unclipped
    zero = nn.Parameter(torch.zeros(2))  # ||p|| = 0 -> bound 0.3 * 1e-3
    opt = LaProp([big, small, zero], lr=1e-3, warmup=0)
    big.grad = torch.tensor([30.0, 40.0])
    small.grad = torch.tensor([0.3, 0.4])
    zero.grad = torch.tensor([3.0, 4.0])
    opt.step()
    # The second moment holds (1 - b2) * g_clipped^2.
    nu = [opt.state[p]["exp_avg_sq"] / 0.001 for p in (big, small, zero)]
    torch.testing.assert_close(nu[0], torch.tensor([0.9, 1.2]) ** 2)
    torch.testing.assert_close(nu[1], torch.tensor([0.3, 0.4]) ** 2)
    torch.testing.assert_close(nu[2], (torch.tensor([3.0, 4.0]) * 0.3e-3 / 5) ** 2)
    assert opt.last_grad_norm is not None
    assert opt.last_grad_norm.item() == pytest.approx(math.sqrt(50**2 + 0.5**2 + 5**2))


def test_linear_warmup() -> None:
    w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = LaProp([w], lr=1.0, agc=0.0, warmup=4)
    seen, lrs = [], []
    for _ in range(7):
        lrs.append(opt.current_lr())
        w.grad = torch.ones(1, dtype=torch.float64)  # constant g: bias-corrected update is 1
        opt.step()
        seen.append(w.item())
    assert lrs == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert seen == pytest.approx([0.0, -0.25, -0.75, -1.5, -2.5, -3.5, -4.5], rel=1e-12)


def test_state_dict_round_trip_continues_identically() -> None:
    model = _model()
    opt = LaProp(model.parameters(), lr=1e-2, warmup=5)
    for seed in range(3):
        _set(model, _grads(model, seed))
        opt.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _model()
    resumed.load_state_dict(saved["model"])
    resumed_opt = LaProp(resumed.parameters(), lr=1e-2, warmup=5)
    resumed_opt.load_state_dict(saved["opt"])
    assert resumed_opt.param_groups[0]["step"] == 3
    for seed in range(3, 8):
        grads = _grads(model, seed)
        _set(model, grads)
        _set(resumed, grads)
        opt.step()
        resumed_opt.step()
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_zero_gradient_skipped_params_and_bad_arguments() -> None:
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    opt = LaProp([a, b], lr=0.1, warmup=0)
    a.grad = torch.zeros(3)
    opt.step()
    assert torch.equal(a, torch.ones(3)) and torch.equal(b, torch.ones(2))
    assert b not in opt.state
    for kwargs in ({"lr": -1.0}, {"betas": (0.9, 1.0)}, {"agc": -0.1}, {"warmup": -1}):
        with pytest.raises(ConfigurationError):
            LaProp([a], **kwargs)


def test_apply_with_given_norms_matches_and_skips_cleanly() -> None:
    # train_step hands apply() the per-gradient norms it computed for its finiteness check;
    # the update must equal the one that computes them itself, and a skipped (non-finite)
    # update must report 0 and leave parameters and moments untouched.
    model, twin = _model(), _model()
    opt = LaProp(model.parameters(), lr=1e-2, warmup=0)
    opt_twin = LaProp(twin.parameters(), lr=1e-2, warmup=0)
    for seed in range(3):
        grads = _grads(model, seed)
        norms = torch.stack(torch._foreach_norm(grads))
        yes = torch.tensor(True)
        got = opt.apply(grads, finite=yes, norms=norms)
        want = opt_twin.apply([g.clone() for g in grads], finite=yes)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
    before = [p.detach().clone() for p in model.parameters()]
    moments = [t.clone() for s in opt.state.values() for t in s.values()]
    bad = _grads(model, 9)
    bad[0][0, 0] = float("nan")
    norms = torch.stack(torch._foreach_norm(bad))
    assert not torch.isfinite(norms).all()
    got = opt.apply(bad, finite=torch.isfinite(norms).all(), norms=norms)
    assert got.item() == 0.0
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
    for a, b in zip((t for s in opt.state.values() for t in s.values()), moments, strict=True):
        assert torch.equal(a, b)
