"""The RSSM posterior scan as one autograd node, with hand-written backpropagation through time.

:meth:`RSSM.observe <physlink_gym.agents.dreamerv3.rssm.RSSM.observe>` runs this when the
config has the reference's layer counts (``obs_layers = dyn_layers = 1``). It computes the same
numbers as the module-by-module loop in :mod:`~physlink_gym.agents.dreamerv3.rssm` (a test
checks values and every gradient against it), but autograd records one node for the whole
window instead of about 60 per step, and the weight gradients, which in a per-step graph are
64 small matrix products per weight, become one large product per weight after the backward
loop. Per step, forward: reset, GRU (``in_deter``/``in_stoch`` ``Linear -> RMSNorm -> SiLU``,
the block layer, the gates), the posterior layer and logits, the unimixed categorical and its
straight-through sample; backward: the same chain in reverse, input gradients only.

Notation inside: ``hk``/``zk`` the state after the reset, ``xhat``/``r`` an RMSNorm's
normalised input and inverse RMS, ``s`` its scale, ``g`` blocks of width ``dg``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from physlink_gym.agents.dreamerv3.compile import maybe_compiled

__all__ = ["ScanSpec", "posterior_scan"]


class ScanSpec(NamedTuple):
    """The constants of the scan (sizes, norm epsilon, unimix)."""

    blocks: int
    latents: int
    classes: int
    unimix: float
    eps: float
    compiled: bool = False


def _rms(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(x * r, r)`` with ``r = 1 / sqrt(mean(x^2) + eps)`` (reference ``Norm('rms')``)."""
    r = torch.rsqrt(torch.square(x).mean(-1, keepdim=True) + eps)
    return x * r, r


def _rms_back(dxhat: Tensor, xhat: Tensor, r: Tensor) -> Tensor:
    """Gradient of :func:`_rms` with respect to ``x``: ``r (dxhat - xhat mean(dxhat xhat))``."""
    return r * (dxhat - xhat * (dxhat * xhat).mean(-1, keepdim=True))


def _silu_grad(pre: Tensor) -> Tensor:
    """Derivative of ``silu`` at ``pre``: ``sigmoid(pre) (1 + pre (1 - sigmoid(pre)))``."""
    sig = torch.sigmoid(pre)
    return sig * (1.0 + pre * (1.0 - sig))


class _Weights(NamedTuple):
    w1: Tensor  # in_deter Linear [hid, D]
    b1: Tensor
    s1: Tensor  # its RMSNorm scale [hid]
    w2: Tensor  # in_stoch Linear [hid, S]
    b2: Tensor
    s2: Tensor
    w_in: Tensor  # hid_in Linear [D, 3 hid]
    b_in: Tensor
    w_rec: Tensor  # hid_rec [g, dg, dg]
    s_hid: Tensor  # hid_norm scale [D]
    w_gate: Tensor  # gates BlockLinear [g, dg, 3 dg]
    b_gate: Tensor  # [3 D]
    w_obs: Tensor  # obs_deter Linear [hid, D] (no bias: the embedding part carries it)
    s_obs: Tensor  # obs_norm scale [hid]
    w_logit: Tensor  # obs_logit Linear [S, hid]
    b_logit: Tensor


def posterior_scan(
    rssm: Any, keep: Tensor, act_embed: Tensor, embed_part: Tensor, noise: Tensor,
    state: tuple[Tensor, Tensor], compiled: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the posterior scan of ``rssm`` over time-major inputs.

    Args:
        rssm: The :class:`~physlink_gym.agents.dreamerv3.rssm.RSSM` (its parameters are read).
        keep: [T, B, 1] float, 0 where the step starts from the initial state.
        act_embed: [T, B, hid] embedded previous actions (already reset by ``keep``).
        embed_part: [T, B, hid] the embedding's part of the posterior layer (with its bias).
        noise: [T, B, L, 1] uniform noise of the latent samples.
        state: ``(h [B, D], z [B, S])`` before the first step.
        compiled: Run the step functions compiled (:mod:`.compile`).

    Returns:
        Time-major ``(deter [T, B, D], stoch [T, B, S], logp [T, B, L, C])``.
    """
    core = rssm.core
    spec = ScanSpec(core.blocks, rssm.latents, rssm.classes, float(rssm.unimix),
                    float(rssm.obs_norm.eps), compiled)
    weights = _Weights(
        core.in_deter[0].weight, core.in_deter[0].bias, core.in_deter[1].scale,
        core.in_stoch[0].weight, core.in_stoch[0].bias, core.in_stoch[1].scale,
        core.hid_in.weight, core.hid_in.bias, core.hid_rec, core.hid_norm.scale,
        core.gates.weight, core.gates.bias,
        rssm.obs_deter.weight, rssm.obs_norm.scale, rssm.obs_logit.weight, rssm.obs_logit.bias,
    )
    out: tuple[Tensor, Tensor, Tensor] = _PosteriorScan.apply(  # type: ignore[no-untyped-call]
        spec, keep, act_embed, embed_part, noise, state[0], state[1], *weights
    )
    return out


class _PosteriorScan(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, spec: ScanSpec, keep: Tensor, act_embed: Tensor, embed_part: Tensor,
        noise: Tensor, deter0: Tensor, stoch0: Tensor, *weights: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        w = _Weights(*weights)
        step = _step_fns(spec)[0]
        h, z = deter0, stoch0
        outs: list[tuple[Tensor, ...]] = []
        for keep_t, ae_t, ep_t, noise_t in zip(
            keep.unbind(0), act_embed.unbind(0), embed_part.unbind(0), noise.unbind(0),
            strict=True,
        ):
            out = step(w, spec, h, z, keep_t, ae_t, ep_t, noise_t)
            h, z = out[0], out[1]
            outs.append(out)
        deters, stochs, logps = (torch.stack([out[i] for out in outs]) for i in range(3))
        ctx.spec = spec
        # The backward loop reads each step's activations as the step returned them: kept per
        # step on ctx (intermediates without autograd history), not stacked here and sliced
        # there, which would cost one view op per activation and step (#10: op events).
        ctx.acts = [out[3:] for out in outs]
        ctx.save_for_backward(keep, deters, *weights)
        return deters, stochs, logps

    @staticmethod
    def backward(
        ctx: Any, d_deters: Tensor | None, d_stochs: Tensor | None, d_logps: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        spec: ScanSpec = ctx.spec
        keep, deters, *weights = ctx.saved_tensors
        w, acts_per_step = _Weights(*weights), ctx.acts
        t_len, n, d = deters.shape
        lat, cls = spec.latents, spec.classes
        step = _step_fns(spec)[1]
        d_deters = deters.new_zeros(t_len, n, d) if d_deters is None else d_deters
        d_stochs = deters.new_zeros(t_len, n, lat * cls) if d_stochs is None else d_stochs
        d_logps = deters.new_zeros(t_len, n, lat, cls) if d_logps is None else d_logps
        dh, dz = deters.new_zeros(n, d), deters.new_zeros(n, lat * cls)
        per_step: list[tuple[Tensor, ...]] = []
        for t in range(t_len - 1, -1, -1):
            dh, dz, *grads = step(
                w, spec, acts_per_step[t], keep[t], d_deters[t] + dh, d_stochs[t] + dz,
                d_logps[t],
            )
            per_step.append(tuple(grads))
        per_step.reverse()
        stacked = _StepGrads(*(torch.stack(x) for x in zip(*per_step, strict=True)))
        acts = {  # stacked over time: only those the weight gradients read
            name: torch.stack([step_acts[i] for step_acts in acts_per_step])
            for i, name in _WEIGHT_GRAD_INPUTS
        }
        weight_grads = _weight_grads(acts, stacked, deters, spec)
        hid = w.w1.shape[0]
        return (None, None, stacked.x[..., 2 * hid :], stacked.q, None, dh, dz, *weight_grads)


class _StepGrads(NamedTuple):
    """Gradients of one step's pre-activations (stacked over time after the loop)."""

    raw: Tensor  # posterior logits [n, S]
    q: Tensor  # posterior layer before its norm [n, hid]; also the embedding part's gradient
    gates: Tensor  # [g, n, 3 dg]
    ypre: Tensor  # block layer before its norm [n, D]
    x: Tensor  # GRU input [n, 3 hid]: in_deter and in_stoch outputs, embedded action
    a1: Tensor  # in_deter before its norm [n, hid]
    a2: Tensor  # in_stoch before its norm [n, hid]
    n_obs: Tensor  # gradients at the RMSNorm outputs, before their scales
    n_hid: Tensor
    n1: Tensor
    n2: Tensor


def _forward_step(
    w: _Weights, spec: ScanSpec, h: Tensor, z: Tensor, keep: Tensor, act_embed: Tensor,
    embed_part: Tensor, noise: Tensor,
) -> tuple[Tensor, ...]:
    """One step: ``(h, z, logp, *activations kept for the backward step)``."""
    n, d = h.shape
    g, lat, cls, eps = spec.blocks, spec.latents, spec.classes, spec.eps
    dg = d // g
    hk, zk = h * keep, z * keep
    xhat1, r1 = _rms(torch.addmm(w.b1, hk, w.w1.t()), eps)
    xhat2, r2 = _rms(torch.addmm(w.b2, zk, w.w2.t()), eps)
    x = torch.cat([F.silu(xhat1 * w.s1), F.silu(xhat2 * w.s2), act_embed], -1)
    hk_g = hk.view(n, g, dg).transpose(0, 1)
    ypre = torch.baddbmm(
        torch.addmm(w.b_in, x, w.w_in.t()).view(n, g, dg).transpose(0, 1), hk_g, w.w_rec
    ).transpose(0, 1).reshape(n, d)
    yhat, ry = _rms(ypre, eps)
    y = F.silu(yhat * w.s_hid)
    gates = torch.baddbmm(
        w.b_gate.view(g, 1, 3 * dg), y.view(n, g, dg).transpose(0, 1), w.w_gate
    )
    reset, cand, update = gates.chunk(3, -1)
    reset = torch.sigmoid(reset)
    c = torch.tanh(reset * cand)
    u = torch.sigmoid(update - 1.0)
    h = torch.lerp(hk_g, c, u).transpose(0, 1).reshape(n, d)
    qhat, rq = _rms(torch.addmm(embed_part, h, w.w_obs.t()), eps)
    qn = F.silu(qhat * w.s_obs)
    raw = torch.addmm(w.b_logit, qn, w.w_logit.t()).view(n, lat, cls)
    e = torch.exp(raw - raw.amax(-1, keepdim=True))
    soft = e / e.sum(-1, keepdim=True)
    probs = (1.0 - spec.unimix) * soft + spec.unimix / cls if spec.unimix else soft
    index = (probs.cumsum(-1) < noise).sum(-1, keepdim=True).clamp(max=cls - 1)
    z = torch.zeros_like(probs).scatter_(-1, index, 1.0).view(n, lat * cls)
    return (h, z, torch.log(probs), hk, zk, x, xhat1, r1, xhat2, r2, yhat, ry, y, reset, cand,
            c, u, qhat, rq, qn, soft)  # fmt: skip


def _backward_step(
    w: _Weights, spec: ScanSpec, acts: list[Tensor], keep: Tensor, dh: Tensor, dz: Tensor,
    dlogp: Tensor,
) -> tuple[Tensor, ...]:
    """Gradients of one step given those reaching its outputs ``h``, ``z`` and ``logp``.

    Returns:
        ``(dh_prev, dz_prev, *_StepGrads)``.
    """
    hk, zk, x, xhat1, r1, xhat2, r2, yhat, ry, y, reset, cand, c, u, qhat, rq, qn, soft = acts
    del zk, x, y, qn
    n, d = dh.shape
    g, lat, cls = spec.blocks, spec.latents, spec.classes
    dg, hid = d // g, w.w1.shape[0]
    # Posterior: z = onehot + probs - sg(probs), logp = log(probs), probs unimixed softmax.
    probs = (1.0 - spec.unimix) * soft + spec.unimix / cls if spec.unimix else soft
    dprobs = dz.view(n, lat, cls) + dlogp / probs
    dsoft = dprobs * (1.0 - spec.unimix) if spec.unimix else dprobs
    draw = (soft * (dsoft - (dsoft * soft).sum(-1, keepdim=True))).view(n, lat * cls)
    dn_obs = (draw @ w.w_logit) * _silu_grad(qhat * w.s_obs)
    dq = _rms_back(dn_obs * w.s_obs, qhat, rq)
    dh = dh + dq @ w.w_obs
    # GRU output h = lerp(hk, c, u), c = tanh(reset * cand): group-major [g, n, dg].
    dh_g = dh.view(n, g, dg).transpose(0, 1)
    hk_g = hk.view(n, g, dg).transpose(0, 1)
    dpre = dh_g * u * (1.0 - c * c)
    dgates = torch.cat(
        [dpre * cand * reset * (1.0 - reset), dpre * reset, dh_g * (c - hk_g) * u * (1.0 - u)],
        -1,
    )
    dy = torch.bmm(dgates, w.w_gate.transpose(1, 2)).transpose(0, 1).reshape(n, d)
    dn_hid = dy * _silu_grad(yhat * w.s_hid)
    dypre = _rms_back(dn_hid * w.s_hid, yhat, ry)
    dhk = torch.baddbmm(
        dh_g * (1.0 - u), dypre.view(n, g, dg).transpose(0, 1), w.w_rec.transpose(1, 2)
    ).transpose(0, 1).reshape(n, d)
    dx = dypre @ w.w_in
    dn1 = dx[:, :hid] * _silu_grad(xhat1 * w.s1)
    dn2 = dx[:, hid : 2 * hid] * _silu_grad(xhat2 * w.s2)
    da1 = _rms_back(dn1 * w.s1, xhat1, r1)
    da2 = _rms_back(dn2 * w.s2, xhat2, r2)
    dhk = dhk + da1 @ w.w1
    return ((dhk * keep), (da2 @ w.w2) * keep, draw, dq, dgates, dypre, dx, da1, da2, dn_obs,
            dn_hid, dn1, dn2)  # fmt: skip


def _step_fns(spec: ScanSpec) -> tuple[Any, Any]:
    """The forward and backward step functions, compiled when ``spec.compiled``."""
    return (maybe_compiled(_forward_step, spec.compiled),
            maybe_compiled(_backward_step, spec.compiled))


# The activations :func:`_forward_step` returns after ``(h, z, logp)``, in order, and the
# (index, name) pairs of those :func:`_weight_grads` reads.
_ACT_NAMES = ("hk", "zk", "x", "xhat1", "r1", "xhat2", "r2", "yhat", "ry", "y", "reset", "cand",
              "c", "u", "qhat", "rq", "qn", "soft")  # fmt: skip
_WEIGHT_GRAD_INPUTS = tuple(
    (i, name) for i, name in enumerate(_ACT_NAMES)
    if name in ("hk", "zk", "x", "xhat1", "xhat2", "yhat", "y", "qhat", "qn"))


def _weight_grads(
    s: dict[str, Tensor], grads: _StepGrads, deters: Tensor, spec: ScanSpec
) -> _Weights:
    """Every weight's gradient as one product over all ``T * B`` rows of the window."""
    t_len, n, d = deters.shape
    g = spec.blocks
    dg = d // g
    rows = t_len * n

    def flat(x: Tensor) -> Tensor:
        return x.reshape(rows, x.shape[-1])

    def groups(x: Tensor) -> Tensor:  # [T, n, D] -> [g, T * n, dg]
        return x.reshape(t_len, n, g, dg).permute(2, 0, 1, 3).reshape(g, rows, dg)

    def scale(dn: Tensor, xhat: str) -> Tensor:  # RMSNorm scale: sum of dn * xhat
        return (flat(dn) * flat(s[xhat])).sum(0)

    gates_g = grads.gates.permute(1, 0, 2, 3).reshape(g, rows, 3 * dg)
    return _Weights(
        w1=flat(grads.a1).t() @ flat(s["hk"]),
        b1=flat(grads.a1).sum(0),
        s1=scale(grads.n1, "xhat1"),
        w2=flat(grads.a2).t() @ flat(s["zk"]),
        b2=flat(grads.a2).sum(0),
        s2=scale(grads.n2, "xhat2"),
        w_in=flat(grads.ypre).t() @ flat(s["x"]),
        b_in=flat(grads.ypre).sum(0),
        w_rec=torch.bmm(groups(s["hk"]).transpose(1, 2), groups(grads.ypre)),
        s_hid=scale(grads.n_hid, "yhat"),
        w_gate=torch.bmm(groups(s["y"]).transpose(1, 2), gates_g),
        b_gate=gates_g.sum(1).reshape(-1),
        w_obs=flat(grads.q).t() @ flat(deters),
        s_obs=scale(grads.n_obs, "qhat"),
        w_logit=flat(grads.raw).t() @ flat(s["qn"]),
        b_logit=flat(grads.raw).sum(0),
    )
