"""The DreamerV3 recurrent state-space model: block GRU core, categorical latents, both scans.

Follows ``dreamerv3/rssm.py`` (``RSSM``: ``_core``, ``_observe``, ``imagine``, ``_prior``) of the
official code (danijar/dreamerv3, 2024 and later) and ``embodied/jax/nets.py``
(``BlockLinear``, ``Norm``). Shapes: ``N``/``B`` batch, ``T`` time, ``H`` imagination horizon,
``D`` deter, ``S = stoch * classes`` (flattened one-hot latent), ``F = D + S`` (the model state
``feat = concat(h, z)`` every head reads), ``A`` action width, ``E`` embedding width.

Randomness is an input: every scan takes its uniform noise (one number per latent and step,
drawn by the caller), so the same noise gives the same numbers eagerly and compiled.

Example:
    >>> import torch
    >>> from physlink_gym.agents.dreamerv3.config import make_config
    >>> rssm = RSSM(make_config("debug"), embed_dim=16, action_dim=2)
    >>> first = torch.zeros(3, 5, dtype=torch.bool)
    >>> noise = torch.rand(3, 5, 4, 1)
    >>> post, prior = rssm.observe(torch.zeros(3, 5, 16), torch.zeros(3, 5, 2), first,
    ...                            rssm.initial(3), noise)
    >>> post.deter.shape, post.stoch.shape, prior.shape
    (torch.Size([3, 5, 32]), torch.Size([3, 5, 16]), torch.Size([3, 5, 4, 4]))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physlink_gym.agents.dreamerv3.config import DreamerV3Config
from physlink_gym.agents.dreamerv3.fused_scan import posterior_scan
from physlink_gym.agents.dreamerv3.networks import (
    MLP,
    BlockLinear,
    RMSNorm,
    init_weight_,
    linear,
)

__all__ = ["RSSM", "BlockGRU", "Posterior", "sample_latent"]


class BlockGRU(nn.Module):
    """The reference RSSM core (``RSSM._core``): a GRU whose recurrence is block-diagonal.

    ``h``, ``z`` and the action each pass ``Linear -> RMSNorm -> SiLU`` to ``hidden`` units;
    the concatenation ``x`` [3 hidden] is appended to every one of the ``blocks`` groups of
    ``h``, and a block-linear layer (then RMSNorm, SiLU) and a block-linear gate layer give
    ``reset, cand, update`` per group: ``h' = u * tanh(r * c) + (1 - u) * h`` with
    ``r = sigmoid(.)``, ``u = sigmoid(. - 1)``. We compute the first block layer on
    ``[h_g, x]`` as ``blockdiag(h) + dense(x)``: the same function and init as the reference's
    repeated input, without materialising ``blocks`` copies of ``x``.

    Args:
        cfg: Sizes (``deter``, ``hidden``, ``blocks``, ``dyn_layers``, ``norm_eps``).
        action_dim: Action width.
    """

    def __init__(self, cfg: DreamerV3Config, action_dim: int) -> None:
        super().__init__()
        d, h, g, eps = cfg.deter, cfg.hidden, cfg.blocks, cfg.norm_eps
        self.blocks = g
        self.in_deter = MLP(d, h, 1, eps)
        self.in_stoch = MLP(cfg.stoch_dim, h, 1, eps)
        self.in_action = MLP(action_dim, h, 1, eps)
        fan_in = d + g * 3 * h  # reference: BlockLinear over [g, d/g + 3h] inputs
        self.hid_rec = nn.Parameter(torch.empty(g, d // g, d // g))
        self.hid_in = linear(3 * h, d, fan_in=fan_in)
        init_weight_(self.hid_rec, fan_in)
        self.hid_norm = RMSNorm(d, eps)
        self.hid_more = nn.ModuleList(
            nn.Sequential(BlockLinear(d, d, g), RMSNorm(d, eps), nn.SiLU())
            for _ in range(cfg.dyn_layers - 1)
        )
        self.gates = BlockLinear(d, 3 * d, g)

    def embed_action(self, action: Tensor) -> Tensor:
        """``SiLU(RMSNorm(Linear(a / sg(max(1, |a|)))))``: batched outside the time loop."""
        action = action / torch.clamp(action.detach().abs(), min=1.0)
        out: Tensor = self.in_action(action)
        return out

    def forward(self, deter: Tensor, stoch: Tensor, action_embed: Tensor) -> Tensor:
        """One step: ``h`` [N, D], ``z`` [N, S], embedded action [N, hidden] -> ``h'`` [N, D]."""
        n, d = deter.shape
        g = self.blocks
        dg = d // g
        x = torch.cat([self.in_deter(deter), self.in_stoch(stoch), action_embed], -1)
        if torch.compiler.is_compiling():  # traced by torch.compile: the form it fuses best
            return self._compiled_core(x, deter)
        deter_g = deter.view(n, g, dg).transpose(0, 1)  # [g, N, D/g] view, group-major
        y = torch.baddbmm(self.hid_in(x).view(n, g, dg).transpose(0, 1), deter_g, self.hid_rec)
        y = F.silu(self.hid_norm(y.transpose(0, 1).reshape(n, d)))
        for layer in self.hid_more:
            y = layer(y)
        # Gates per group, computed and combined group-major to avoid layout copies.
        bias = self.gates.bias.view(g, 1, 3 * dg)
        gates = torch.baddbmm(bias, y.view(n, g, dg).transpose(0, 1), self.gates.weight)
        return _gru_update(gates, deter_g).transpose(0, 1).reshape(n, d)

    def _compiled_core(self, x: Tensor, deter: Tensor) -> Tensor:
        """:meth:`forward` after ``x``, in the form inductor compiles best for a CPU.

        Eagerly the group-major gates and ``baddbmm`` avoid layout copies; compiled, the
        group-major elementwise part became three passes and ``baddbmm`` first copied its
        bias into every output row. Here the products are read sample-major, the biases join
        the elementwise kernel (:func:`_gru_update` takes tanh through sigmoid when compiled
        for a CPU). Imagination runs this over all ``N`` imagined
        states: about 6% of a compiled ``1m`` update (docs/benchmarks/speed.md).
        """
        n, d = deter.shape
        g = self.blocks
        dg = d // g
        rec = torch.bmm(deter.view(n, g, dg).transpose(0, 1), self.hid_rec).transpose(0, 1)
        y = F.silu(self.hid_norm((self.hid_in(x).view(n, g, dg) + rec).reshape(n, d)))
        for layer in self.hid_more:
            y = layer(y)
        gates = torch.bmm(y.view(n, g, dg).transpose(0, 1), self.gates.weight).transpose(0, 1)
        gates = gates + self.gates.bias.view(g, 3 * dg)  # [N, g, 3 D/g]
        return _gru_update(gates, deter.view(n, g, dg)).reshape(n, d)


def _gru_update(gates: Tensor, h: Tensor) -> Tensor:
    """``h' = u * tanh(r * c) + (1 - u) * h`` from ``gates = (r, c, u)`` per group, any layout.

    ``gates`` [..., 3 D/g] and ``h`` [..., D/g] share their leading layout (group-major eagerly,
    sample-major compiled). Compiled for a CPU, ``tanh(x)`` is taken as ``2 sigmoid(2x) - 1``
    (equal to within 1.2e-7): inductor's vectorised CPU tanh costs about three of its exps,
    while eager tanh is a fast library call.
    """
    reset, cand, update = gates.chunk(3, -1)
    cand = torch.sigmoid(reset) * cand
    if torch.compiler.is_compiling() and cand.device.type == "cpu":
        cand = 2.0 * torch.sigmoid(2.0 * cand) - 1.0
    else:
        cand = torch.tanh(cand)
    update = torch.sigmoid(update - 1.0)
    # Under bfloat16 autocast the gates come back in bfloat16; the state keeps its dtype.
    return torch.lerp(h, cand.to(h.dtype), update.to(h.dtype))  # u * cand + (1 - u) * h


class Posterior(NamedTuple):
    """Posterior states of an observed sequence, each [B, T, ...]."""

    deter: Tensor  # [B, T, D]
    stoch: Tensor  # [B, T, S] straight-through one-hot samples
    logits: Tensor  # [B, T, L, C] unimixed log-probabilities


def sample_latent(probs: Tensor, noise: Tensor) -> Tensor:
    """Straight-through one-hot sample of [..., L, C] probabilities, flattened to [..., L*C].

    Samples by inverting the CDF with one uniform number per latent (``index = #(cdf < u)``),
    which is exact and lets the caller draw the noise of a whole sequence at once. The forward
    value is one-hot; the gradient is that of the probabilities (reference
    ``OneHot._onehot_with_grad``).

    Args:
        probs: Probabilities [..., L, C] (after unimix).
        noise: Uniform [0, 1) noise [..., L, 1].

    Returns:
        Tensor [..., L*C].
    """
    cdf = probs.detach().cumsum(-1)
    index = (cdf < noise).sum(-1, keepdim=True).clamp_(max=probs.shape[-1] - 1)
    onehot = torch.zeros_like(probs).scatter_(-1, index, 1.0)
    if probs.requires_grad:
        onehot = onehot + (probs - probs.detach())
    return onehot.flatten(-2)


class RSSM(nn.Module):
    """Recurrent state-space model with a block GRU and categorical latents (``rssm.RSSM``).

    State: ``(h [N, D], z [N, S])``; ``initial`` is all zeros and ``is_first`` rows are reset to
    it (and their previous action zeroed) before the step, as in ``RSSM._observe``.

    Args:
        cfg: Sizes and ``unimix``.
        embed_dim: Width of the encoder output.
        action_dim: Action width.
    """

    def __init__(self, cfg: DreamerV3Config, embed_dim: int, action_dim: int) -> None:
        super().__init__()
        d, h, eps, out = cfg.deter, cfg.hidden, cfg.norm_eps, cfg.stoch_dim
        self.deter, self.stoch_dim = d, out
        self.latents, self.classes, self.unimix = cfg.stoch, cfg.classes, cfg.unimix
        # The reference's layer counts have a fused scan with its own backward pass.
        self.fused = cfg.obs_layers == 1 and cfg.dyn_layers == 1
        # The fused scan's step functions run compiled ("auto": the learner decides per run).
        self.compiled = cfg.compile is True
        self.core = BlockGRU(cfg, action_dim)
        # Posterior: obslayers x (Linear -> norm -> act) on concat(h, embed), then the logits.
        # The first layer is split into its h and embed parts so the embed part runs batched.
        self.obs_deter = linear(d, h, bias=False, fan_in=d + embed_dim)
        self.obs_embed = linear(embed_dim, h, fan_in=d + embed_dim)
        self.obs_norm = RMSNorm(h, eps)
        self.obs_more = MLP(h, h, cfg.obs_layers - 1, eps)
        self.obs_logit = linear(h, out, scale=cfg.rssm_outscale)
        # Prior: imglayers x (Linear -> norm -> act) on h, then the logits.
        self.prior_mlp = MLP(d, h, cfg.img_layers, eps)
        self.prior_logit = linear(h, out, scale=cfg.rssm_outscale)

    def initial(self, batch: int) -> tuple[Tensor, Tensor]:
        """All-zero state ``(h [batch, D], z [batch, S])`` (reference ``RSSM.initial``)."""
        p = self.obs_logit.weight
        return p.new_zeros(batch, self.deter), p.new_zeros(batch, self.stoch_dim)

    def noise(self, *shape: int, device: torch.device | None = None) -> Tensor:
        """Uniform noise for ``shape`` steps of latent sampling: ``[*shape, L, 1]``."""
        return torch.rand(*shape, self.latents, 1, device=device)

    def _probs(self, raw: Tensor) -> Tensor:
        """Unimixed probabilities [..., L, C] (reference ``OneHot(logits, unimix)``).

        ``(1 - u) * softmax(raw) + u / C``, written out elementwise: ``torch.softmax`` over a
        last axis of a few classes is slower on CPU than these few elementwise ops.
        """
        raw = raw.reshape(*raw.shape[:-1], self.latents, self.classes).float()
        e = (raw - raw.amax(-1, keepdim=True).detach()).exp()
        probs = e / e.sum(-1, keepdim=True)
        if self.unimix:
            probs = (1.0 - self.unimix) * probs + self.unimix / self.classes
        return probs

    def _dist(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """Unimixed ``(probs, log-probs)`` [..., L, C] (see :meth:`_probs`)."""
        probs = self._probs(raw)
        return probs, torch.log(probs)

    def prior(self, deter: Tensor) -> Tensor:
        """Prior log-probabilities [..., L, C] from ``h`` [..., D] (``RSSM._prior``)."""
        return self._dist(self.prior_logit(self.prior_mlp(deter)))[1]

    def obs_step(
        self,
        state: tuple[Tensor, Tensor],
        action: Tensor,
        embed: Tensor,
        is_first: Tensor,
        noise: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One posterior step; returns ``(h, z, logits)`` (reference ``RSSM._observe``)."""
        keep = (~is_first).to(embed.dtype).unsqueeze(-1)
        if noise is None:
            noise = self.noise(embed.shape[0], device=embed.device)
        return self._obs_core(
            state[0], state[1], keep, self.core.embed_action(action * keep),
            self.obs_embed(embed), noise,
        )

    def img_step(
        self, state: tuple[Tensor, Tensor], action: Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One prior step ``(h, z), a -> (h', z')`` (reference ``RSSM.imagine``, single)."""
        if noise is None:
            noise = self.noise(action.shape[0], device=action.device)
        deter = self.core(state[0], state[1], self.core.embed_action(action))
        return deter, sample_latent(self._probs(self.prior_logit(self.prior_mlp(deter))), noise)

    def _obs_core(
        self, deter: Tensor, stoch: Tensor, keep: Tensor, act_embed: Tensor,
        embed_part: Tensor, noise: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Reset (``keep = 0``), GRU step, posterior and its sample: one step of the scan."""
        deter = self.core(deter * keep, stoch * keep, act_embed)
        x = F.silu(self.obs_norm(torch.addmm(embed_part, deter, self.obs_deter.weight.t())))
        probs, logp = self._dist(self.obs_logit(self.obs_more(x)))
        return deter, sample_latent(probs, noise), logp

    def observe(
        self,
        embed: Tensor,
        action: Tensor,
        is_first: Tensor,
        state: tuple[Tensor, Tensor],
        noise: Tensor | None = None,
        fused: bool | None = None,
    ) -> tuple[Posterior, Tensor]:
        """Posterior scan over a sequence, then the priors in one batch (``RSSM.loss``).

        Everything that does not depend on the recurrence (the action and embedding parts of
        the first layers, the reset masks) is computed for all steps before the loop. The loop
        itself runs as :func:`~physlink_gym.agents.dreamerv3.fused_scan.posterior_scan` (one
        autograd node, the same numbers) where the layer counts allow and the inputs are
        float32, else module by module.

        Args:
            embed: Encoder output [B, T, E].
            action: Previous actions [B, T, A] (``action[t]`` led into step t).
            is_first: [B, T] bool; rows reset to the initial state before the step.
            state: Carry ``(h [B, D], z [B, S])`` before the first step.
            noise: Uniform noise [B, T, L, 1] of the latent samples (drawn when None).
            fused: Force the fused scan on or off (None: where it applies).

        Returns:
            ``(posterior, prior_logits [B, T, L, C])``.
        """
        t_len = is_first.shape[1]
        if noise is None:
            noise = self.noise(*is_first.shape, device=embed.device)
        keep = (~is_first).to(embed.dtype).unsqueeze(-1).transpose(0, 1)  # [T, B, 1]
        act_embed = self.core.embed_action(action.transpose(0, 1) * keep)  # [T, B, hidden]
        embed_part = self.obs_embed(embed.transpose(0, 1))  # [T, B, hidden]
        noise = noise.transpose(0, 1)
        if fused is None:
            fused = self.fused and embed_part.dtype == torch.float32
        if fused:
            deters_tm, stochs_tm, logps_tm = posterior_scan(
                self, keep, act_embed, embed_part, noise, state, self.compiled
            )
            post = Posterior(
                deters_tm.transpose(0, 1), stochs_tm.transpose(0, 1), logps_tm.transpose(0, 1)
            )
            return post, self.prior(post.deter)
        deter, stoch = state
        deters, stochs, logps = [], [], []
        for t in range(t_len):
            deter, stoch, logp = self._obs_core(
                deter, stoch, keep[t], act_embed[t], embed_part[t], noise[t]
            )
            deters.append(deter)
            stochs.append(stoch)
            logps.append(logp)
        post = Posterior(torch.stack(deters, 1), torch.stack(stochs, 1), torch.stack(logps, 1))
        return post, self.prior(post.deter)

    def imagine(
        self,
        start: tuple[Tensor, Tensor],
        policy: Callable[[Tensor, int], Tensor],
        horizon: int,
        noise: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Roll the prior forward with actions from ``policy(feat [N, F], t) -> [N, A]``.

        Outputs are time-major and written into preallocated buffers, so that every time slice,
        and the slices ``[1:]`` and ``[:-1]``, are contiguous (row-wise heads then run on them
        without copies). Call it under ``torch.no_grad()`` unless gradients through the
        rollout are wanted.

        Args:
            start: ``(h [N, D], z [N, S])``.
            policy: Maps model states (and the step index) to actions.
            horizon: Number of imagined steps H.
            noise: Uniform noise [H, N, L, 1] of the latent samples.

        Returns:
            ``(feats [H+1, N, F], actions [H, N, A])``; ``feats[0]`` is the start and
            ``actions[t]`` is taken in ``feats[t]``.
        """
        deter, stoch = start
        n = deter.shape[0]
        feats = deter.new_empty(horizon + 1, n, self.deter + self.stoch_dim)
        torch.cat([deter, stoch], -1, out=feats[0])
        actions: Tensor | None = None
        for t in range(horizon):
            action = policy(feats[t], t)
            if actions is None:
                actions = action.new_empty(horizon, *action.shape)
            actions[t] = action
            deter, stoch = self.img_step((deter, stoch), action, noise[t])
            torch.cat([deter, stoch], -1, out=feats[t + 1])
        assert actions is not None, "horizon must be >= 1"
        return feats, actions
