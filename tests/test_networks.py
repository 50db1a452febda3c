"""DreamerV3 networks: RMSNorm, init, block-linear / block GRU structure, heads, RSSM resets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from physlink_gym.agents.dreamerv3 import compile as compile_module
from physlink_gym.agents.dreamerv3.config import make_config
from physlink_gym.agents.dreamerv3.distributions import (
    symlog,
    twohot_bins,
    twohot_mean,
    unimix_logits,
)
from physlink_gym.agents.dreamerv3.networks import (
    Actor,
    BlockLinear,
    Encoder,
    MLPHead,
    RMSNorm,
    TwoHotHead,
    fused_heads,
    linear,
)
from physlink_gym.agents.dreamerv3.rssm import RSSM, BlockGRU, sample_latent

CFG = make_config("debug")


# One torch thread per test (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def test_rmsnorm_golden() -> None:
    norm = RMSNorm(4)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    expected = torch.tensor([1.0, 2.0, 3.0, 4.0]) / math.sqrt(7.5 + 1e-4)  # eps 1e-4 (reference)
    out = norm(x)
    torch.testing.assert_close(out[0], expected)
    assert torch.equal(out[1], torch.zeros(4))
    with torch.no_grad():
        norm.scale.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
    torch.testing.assert_close(norm(x)[0], expected * torch.tensor([1.0, 2.0, 0.5, -1.0]))


def test_linear_init_is_truncated_fan_in_normal() -> None:
    torch.manual_seed(0)
    layer = linear(400, 300)
    std = layer.weight.std().item()
    assert abs(std - 1 / math.sqrt(400)) < 0.03 / math.sqrt(400)
    assert layer.weight.abs().max().item() <= 2 * 1.1368 / math.sqrt(400) + 1e-6
    assert torch.equal(layer.bias, torch.zeros(300))
    assert torch.equal(linear(8, 3, scale=0.0).weight, torch.zeros(3, 8))
    small = linear(400, 300, scale=0.01).weight.std().item()
    assert abs(small - 0.01 / math.sqrt(400)) < 0.0005 / math.sqrt(400)


def test_block_linear_equals_block_diagonal_dense() -> None:
    torch.manual_seed(0)
    layer = BlockLinear(12, 6, blocks=3)
    with torch.no_grad():
        layer.bias.normal_()
    dense = torch.block_diag(*layer.weight)  # [12, 6]
    x = torch.randn(5, 12)
    torch.testing.assert_close(layer(x), x @ dense + layer.bias)
    # Perturbing input block 1 changes output block 1 only.
    x2 = x.clone()
    x2[:, 4:8] += 10.0
    diff = (layer(x2) - layer(x)).abs().reshape(5, 3, 2).sum((0, 2))
    assert diff[1] > 0 and diff[0] == 0 and diff[2] == 0


def _reference_core(core: BlockGRU, deter: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The reference's formulation: ``x`` repeated per group, one block-linear kernel."""
    n, d = deter.shape
    g = core.blocks
    dg = d // g
    w_in = core.hid_in.weight.t().reshape(x.shape[-1], g, dg).permute(1, 0, 2)  # [g, 3h, dg]
    kernel = torch.cat([core.hid_rec, w_in], 1)  # [g, dg + 3h, dg]
    grouped = torch.cat([deter.reshape(n, g, dg), x[:, None].expand(n, g, x.shape[-1])], -1)
    y = torch.einsum("ngi,gio->ngo", grouped, kernel).reshape(n, d) + core.hid_in.bias
    y = nn.functional.silu(core.hid_norm(y))
    gates = torch.einsum("ngi,gio->ngo", y.reshape(n, g, dg), core.gates.weight)
    gates = gates.reshape(n, 3 * d) + core.gates.bias
    reset, cand, update = torch.split(gates.reshape(n, g, 3 * dg), dg, -1)
    reset = torch.sigmoid(reset.reshape(n, d))
    cand = torch.tanh(reset * cand.reshape(n, d))
    update = torch.sigmoid(update.reshape(n, d) - 1)
    return update * cand + (1 - update) * deter


@pytest.mark.parametrize("compiling", [False, True])
def test_block_gru_matches_reference_formulation(
    compiling: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # compiling=True takes the form the GRU has inside torch.compile (sample-major gates,
    # tanh through sigmoid), run eagerly here; compiled, it is checked by the slow tests.
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
    torch.manual_seed(0)
    core = BlockGRU(CFG, action_dim=3)
    with torch.no_grad():  # biases away from their zero init, so the bias paths count
        core.hid_in.bias.normal_()
        core.gates.bias.normal_()
    deter, stoch = torch.randn(64, CFG.deter), torch.rand(64, CFG.stoch_dim)
    act = core.embed_action(torch.randn(64, 3) * 3)
    x = torch.cat([core.in_deter(deter), core.in_stoch(stoch), act], -1)
    out = core(deter, stoch, act)
    assert out.shape == (64, CFG.deter)
    torch.testing.assert_close(out, _reference_core(core, deter, x), rtol=0, atol=1e-6)


def test_block_gru_recurrence_is_block_diagonal() -> None:
    torch.manual_seed(0)
    core = BlockGRU(CFG, action_dim=2)
    # Remove the two cross-block paths (dense input layer on h and the shared RMS statistic);
    # what is left is the recurrent block structure itself.
    with torch.no_grad():
        core.in_deter[0].weight.zero_()
    core.hid_norm = nn.Identity()  # type: ignore[assignment]
    deter = torch.randn(1, CFG.deter)
    stoch, act = torch.rand(1, CFG.stoch_dim), core.embed_action(torch.randn(1, 2))
    jac = torch.autograd.functional.jacobian(lambda h: core(h, stoch, act)[0], deter)[:, 0]
    dg = CFG.deter // CFG.blocks
    blocks = jac.reshape(CFG.blocks, dg, CFG.blocks, dg).abs().sum((1, 3))
    off_diagonal = blocks - torch.diag(torch.diagonal(blocks))
    assert torch.all(torch.diagonal(blocks) > 0)
    assert torch.equal(off_diagonal, torch.zeros_like(off_diagonal))


def test_fused_heads_equal_the_heads_one_by_one() -> None:
    torch.manual_seed(0)
    heads = [
        TwoHotHead(12, 8, 2, 255),  # padded logits
        Actor(make_config("debug", units=8, deter=8, stoch=1), action_dim=2, discrete=False),
        MLPHead(12, 8, 0, 1),  # no MLP layer: runs on its own
        MLPHead(12, 6, 1, 3),  # another width
    ]
    for head in heads:  # away from the zero init of the output layers
        for p in head.parameters():
            p.data.normal_(0.0, 0.5)
    x = torch.randn(5, 7, 12)
    fused = fused_heads(heads, x)
    alone = [head(x) for head in heads]
    for a, b in zip(fused, alone, strict=True):
        assert a.shape == b.shape and a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # Each head's weights get the gradient they get alone, and only from their own output.
    grads_fused = torch.autograd.grad(fused[0].sum() + fused[3].square().sum(),
                                      [heads[0].mlp[0].weight, heads[3].mlp[0].weight,
                                       heads[1].mlp[0].weight], allow_unused=True)
    grads_alone = torch.autograd.grad(alone[0].sum() + alone[3].square().sum(),
                                      [heads[0].mlp[0].weight, heads[3].mlp[0].weight])
    torch.testing.assert_close(grads_fused[0], grads_alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads_fused[1], grads_alone[1], rtol=1e-5, atol=1e-5)
    assert grads_fused[2] is None or torch.equal(grads_fused[2], torch.zeros_like(grads_fused[2]))


def test_action_is_scaled_to_unit_magnitude() -> None:
    core = BlockGRU(CFG, action_dim=2)
    a = torch.tensor([[3.0, -0.5]])
    torch.testing.assert_close(core.embed_action(a), core.in_action(torch.tensor([[1.0, -0.5]])))


def test_zero_initialised_heads_predict_exactly_zero() -> None:
    torch.manual_seed(0)
    bins = twohot_bins(255)
    for layers in (1, 3):
        head = MLPHead(CFG.feat_dim, 16, layers, 255, outscale=0.0)
        x = torch.randn(7, 5, CFG.feat_dim) * 10
        assert torch.equal(head(x), torch.zeros(7, 5, 255))
        assert torch.equal(twohot_mean(head(x), bins), torch.zeros(7, 5))


def test_sample_latent_is_one_hot_with_straight_through_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 4, 5, requires_grad=True)
    logp = torch.log_softmax(logits, -1)
    z = sample_latent(logp.exp(), torch.rand(6, 4, 1))
    assert z.shape == (6, 20)
    flat = z.detach().reshape(6, 4, 5)
    assert torch.equal(flat.sum(-1), torch.ones(6, 4)) and set(flat.unique().tolist()) == {0, 1}
    weights = torch.randn(6, 20)
    (grad,) = torch.autograd.grad((z * weights).sum(), logits, retain_graph=True)
    (expected,) = torch.autograd.grad((logp.exp().flatten(-2) * weights).sum(), logits)
    torch.testing.assert_close(grad, expected)


def test_sample_latent_frequencies() -> None:
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.2, 0.7])
    z = sample_latent(probs.expand(20000, 1, 3), torch.rand(20000, 1, 1)).reshape(20000, 3)
    torch.testing.assert_close(z.mean(0), probs, atol=0.015, rtol=0)


def test_encoder_reads_symlog_observations() -> None:
    enc = Encoder(3, CFG)
    obs = torch.tensor([[100.0, -5.0, 0.0]])
    torch.testing.assert_close(enc(obs), enc.mlp(symlog(obs)))


def test_actor_init_and_distributions() -> None:
    torch.manual_seed(0)
    feat = torch.randn(64, CFG.feat_dim)
    cont = Actor(CFG, action_dim=3, discrete=False)
    raw = cont(feat)
    assert raw.shape == (64, 6) and raw.abs().max() < 0.1  # output init scale 0.01
    mode = cont.sample(raw, deterministic=True)
    assert mode.abs().max() < 0.1
    logp, ent = cont.log_prob_entropy(raw, mode)
    std = 0.9 * torch.sigmoid(torch.tensor(2.0)) + 0.1  # bounded normal at init
    expected_ent = 3 * (0.5 * math.log(2 * math.pi * std.item() ** 2) + 0.5)
    torch.testing.assert_close(ent, torch.full((64,), expected_ent), atol=1e-2, rtol=0)
    assert logp.shape == (64,)
    disc = Actor(CFG, action_dim=4, discrete=True)
    draw = disc(feat)
    action = disc.sample(draw)
    assert torch.equal(action.sum(-1), torch.ones(64))
    logp, ent = disc.log_prob_entropy(draw, action)
    torch.testing.assert_close(ent, torch.full((64,), math.log(4)), atol=1e-3, rtol=0)
    # 1% unimix: no action gets less than 0.01 / 4 probability, however peaked the logits.
    peaked = torch.tensor([[50.0, 0.0, 0.0, 0.0]])
    logp_min, _ = disc.log_prob_entropy(peaked, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert logp_min.item() == pytest.approx(math.log(0.01 / 4), rel=1e-4)


def test_rssm_shapes_and_imagine() -> None:
    torch.manual_seed(0)
    rssm = RSSM(CFG, embed_dim=16, action_dim=2)
    b, t = 3, 6
    first = torch.zeros(b, t, dtype=torch.bool)
    posts, prior = rssm.observe(torch.randn(b, t, 16), torch.randn(b, t, 2), first, rssm.initial(b))
    assert posts.deter.shape == (b, t, CFG.deter) and posts.stoch.shape == (b, t, CFG.stoch_dim)
    assert posts.logits.shape == prior.shape == (b, t, CFG.stoch, CFG.classes)
    # Unimix: every latent class keeps at least 1% / classes probability.
    assert posts.logits.exp().min() >= 0.01 / CFG.classes * 0.999
    start = (posts.deter[:, -1], posts.stoch[:, -1])
    with torch.no_grad():
        feats, actions = rssm.imagine(
            start, lambda f, t: torch.tanh(f[:, :2]), horizon=4, noise=rssm.noise(4, b)
        )
    assert feats.shape == (5, b, CFG.feat_dim) and actions.shape == (4, b, 2)  # time-major
    torch.testing.assert_close(feats[0], torch.cat(start, -1))
    torch.testing.assert_close(actions[0], torch.tanh(feats[0, :, :2]))
    torch.testing.assert_close(actions[3], torch.tanh(feats[3, :, :2]))


def test_is_first_resets_state_and_previous_action() -> None:
    torch.manual_seed(0)
    rssm = RSSM(CFG, embed_dim=16, action_dim=2)
    b, t = 2, 6
    embed, action = torch.randn(b, t, 16), torch.randn(b, t, 2)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[0, 3] = True
    state = (torch.randn(b, CFG.deter), torch.rand(b, CFG.stoch_dim))
    posts, _ = rssm.observe(embed, action, first, state)
    # Row 0 at t=3 equals a step from the initial state with a zero previous action.
    fresh_h, _, fresh_logp = rssm.obs_step(
        rssm.initial(1), torch.zeros(1, 2), embed[0:1, 3], torch.zeros(1, dtype=torch.bool)
    )
    torch.testing.assert_close(posts.deter[0, 3], fresh_h[0])
    torch.testing.assert_close(posts.logits[0, 3], fresh_logp[0])
    # obs_step with is_first=True ignores whatever state and action it is given.
    h_a, _, lp_a = rssm.obs_step(state, action[:, 0], embed[:, 0], torch.ones(b, dtype=torch.bool))
    h_b, _, lp_b = rssm.obs_step(
        rssm.initial(b), torch.zeros(b, 2), embed[:, 0], torch.zeros(b, dtype=torch.bool)
    )
    torch.testing.assert_close(h_a, h_b)
    torch.testing.assert_close(lp_a, lp_b)
    # Without the reset the state matters (the test can fail).
    h_c, _, _ = rssm.obs_step(state, action[:, 0], embed[:, 0], torch.zeros(b, dtype=torch.bool))
    assert not torch.allclose(h_c, h_b)


def test_fast_latent_unimix_matches_reference_formula() -> None:
    torch.manual_seed(0)
    rssm = RSSM(CFG, embed_dim=16, action_dim=2)  # classes = 4: the elementwise path
    raw = torch.randn(5, CFG.stoch_dim) * 5
    expected = unimix_logits(raw.reshape(5, CFG.stoch, CFG.classes), 0.01)
    torch.testing.assert_close(rssm._dist(raw)[1], expected)


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(fn: object, **kwargs: object) -> object:
        def fail(*args: object) -> None:
            raise RuntimeError("no C++ compiler")

        return fail

    monkeypatch.setattr(compile_module.torch, "compile", broken_compile)
    monkeypatch.setattr(compile_module, "_CACHE", {})
    torch.manual_seed(0)
    rssm = RSSM(make_config("debug", compile=True), embed_dim=16, action_dim=2)
    first = torch.zeros(2, 3, dtype=torch.bool)
    args = (torch.randn(2, 3, 16), torch.randn(2, 3, 2), first, rssm.initial(2), rssm.noise(2, 3))
    with pytest.warns(RuntimeWarning, match="running eagerly"):
        fallback, _ = rssm.observe(*args)
    rssm.compiled = False
    eager, _ = rssm.observe(*args)
    assert torch.equal(fallback.deter, eager.deter)
    assert torch.equal(fallback.stoch, eager.stoch)


@pytest.mark.slow
def test_compiled_steps_match_eager() -> None:
    torch.manual_seed(0)
    rssm = RSSM(make_config("debug", compile=True), embed_dim=16, action_dim=2)
    first = torch.zeros(2, 5, dtype=torch.bool)
    embed = torch.randn(2, 5, 16, requires_grad=True)
    args = (embed, torch.randn(2, 5, 2), first, rssm.initial(2), rssm.noise(2, 5))
    compiled, _ = rssm.observe(*args)
    (grad_c,) = torch.autograd.grad(compiled.deter.square().sum(), embed)
    rssm.compiled = False
    eager, _ = rssm.observe(*args)
    (grad_e,) = torch.autograd.grad(eager.deter.square().sum(), embed)
    torch.testing.assert_close(compiled.deter, eager.deter, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_c, grad_e, rtol=1e-4, atol=1e-5)
