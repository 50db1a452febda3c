"""The DreamerV3 recurrent state-space model: block GRU core and categorical latents.

Follows ``dreamerv3/rssm.py`` (``RSSM``: ``_core``, ``_observe``, ``imagine``, ``_prior``) of the
official code (danijar/dreamerv3, 2024 and later) and ``embodied/jax/nets.py``
(``BlockLinear``, ``Norm``). Shapes: ``N``/``B`` batch, ``T`` time, ``D`` deter,
``S = stoch * classes`` (flattened one-hot latent), ``F = D + S``, ``A`` action width,
``E`` embedding width.

Example:
    >>> import torch
    >>> from physlink_gym.agents.dreamerv3.config import make_config
    >>> rssm = RSSM(make_config("debug"), embed_dim=16, action_dim=2)
    >>> h, z = rssm.initial(3)
    >>> first = torch.zeros(3, 5, dtype=torch.bool)
    >>> posts, priors = rssm.observe(torch.zeros(3, 5, 16), torch.zeros(3, 5, 2), first, (h, z))
    >>> posts.deter.shape, posts.stoch.shape, priors.shape
    (torch.Size([3, 5, 32]), torch.Size([3, 5, 16]), torch.Size([3, 5, 4, 4]))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physlink_gym.agents.dreamerv3.config import DreamerV3Config
from physlink_gym.agents.dreamerv3.distributions import unimix_logits
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
        x = torch.cat([self.in_deter(deter), self.in_stoch(stoch), action_embed], -1)
        rec = torch.bmm(deter.reshape(n, g, d // g).transpose(0, 1), self.hid_rec)
        y = self.hid_in(x) + rec.transpose(0, 1).reshape(n, d)
        y = F.silu(self.hid_norm(y))
        for layer in self.hid_more:
            y = layer(y)
        gates = self.gates(y).reshape(n, g, 3, d // g)
        reset = torch.sigmoid(gates[:, :, 0].reshape(n, d))
        cand = torch.tanh(reset * gates[:, :, 1].reshape(n, d))
        update = torch.sigmoid(gates[:, :, 2].reshape(n, d) - 1.0)
        return update * cand + (1.0 - update) * deter


class Posterior(NamedTuple):
    """Posterior states of an observed sequence, each [B, T, ...]."""

    deter: Tensor  # [B, T, D]
    stoch: Tensor  # [B, T, S] straight-through one-hot samples
    logits: Tensor  # [B, T, L, C] unimixed log-probabilities


def sample_latent(logp: Tensor, noise: Tensor | None = None) -> Tensor:
    """Straight-through one-hot sample of [..., L, C] log-probabilities, flattened to [..., L*C].

    Uses the exponential race ``argmax(p / e)``, ``e ~ Exp(1)``, which samples the categorical
    exactly and lets the caller draw all noise of a sequence at once. The forward value is
    one-hot; the gradient is that of the probabilities (reference ``OneHot._onehot_with_grad``).

    Args:
        logp: Normalised log-probabilities [..., L, C] (after unimix).
        noise: Optional Exp(1) noise of the same shape.

    Returns:
        Tensor [..., L*C].
    """
    probs = logp.exp()
    if noise is None:
        noise = torch.empty_like(probs).exponential_()
    index = (probs.detach() / noise).argmax(-1, keepdim=True)
    onehot = torch.zeros_like(probs).scatter_(-1, index, 1.0)
    return (onehot + (probs - probs.detach())).flatten(-2)


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

    def _logp(self, raw: Tensor) -> Tensor:
        raw = raw.reshape(*raw.shape[:-1], self.latents, self.classes)
        return unimix_logits(raw.float(), self.unimix)

    def prior(self, deter: Tensor) -> Tensor:
        """Prior log-probabilities [..., L, C] from ``h`` [..., D] (``RSSM._prior``)."""
        return self._logp(self.prior_logit(self.prior_mlp(deter)))

    def _post(self, deter: Tensor, embed_part: Tensor) -> Tensor:
        x = F.silu(self.obs_norm(self.obs_deter(deter) + embed_part))
        return self._logp(self.obs_logit(self.obs_more(x)))

    def obs_step(
        self, state: tuple[Tensor, Tensor], action: Tensor, embed: Tensor, is_first: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One posterior step; returns ``(h, z, logits)`` (reference ``RSSM._observe``)."""
        keep = (~is_first).to(embed.dtype).unsqueeze(-1)
        deter, stoch = state[0] * keep, state[1] * keep
        deter = self.core(deter, stoch, self.core.embed_action(action * keep))
        logp = self._post(deter, self.obs_embed(embed))
        return deter, sample_latent(logp), logp

    def img_step(self, state: tuple[Tensor, Tensor], action: Tensor) -> tuple[Tensor, Tensor]:
        """One prior step ``(h, z), a -> (h', z')`` (reference ``RSSM.imagine``, single)."""
        deter = self.core(state[0], state[1], self.core.embed_action(action))
        return deter, sample_latent(self.prior(deter))

    def observe(
        self, embed: Tensor, action: Tensor, is_first: Tensor, state: tuple[Tensor, Tensor]
    ) -> tuple[Posterior, Tensor]:
        """Posterior scan over a sequence, then the priors in one batch (``RSSM.loss``).

        Args:
            embed: Encoder output [B, T, E].
            action: Previous actions [B, T, A] (``action[t]`` led into step t).
            is_first: [B, T] bool; rows reset to the initial state before the step.
            state: Carry ``(h [B, D], z [B, S])`` before the first step.

        Returns:
            ``(posterior, prior_logits [B, T, L, C])``.
        """
        b, t = is_first.shape
        keep = (~is_first).to(embed.dtype).unsqueeze(-1)  # [B, T, 1]
        act_embed = self.core.embed_action(action * keep)  # batched over T
        embed_part = self.obs_embed(embed)  # batched over T
        noise = torch.empty(b, t, self.latents, self.classes, device=embed.device).exponential_()
        deter, stoch = state
        deters, stochs, logps = [], [], []
        for i in range(t):
            k = keep[:, i]
            deter = self.core(deter * k, stoch * k, act_embed[:, i])
            logp = self._post(deter, embed_part[:, i])
            stoch = sample_latent(logp, noise[:, i])
            deters.append(deter)
            stochs.append(stoch)
            logps.append(logp)
        posts = Posterior(torch.stack(deters, 1), torch.stack(stochs, 1), torch.stack(logps, 1))
        return posts, self.prior(posts.deter)

    def imagine(
        self,
        start: tuple[Tensor, Tensor],
        policy_fn: Callable[[Tensor], Tensor],
        horizon: int,
    ) -> tuple[Tensor, Tensor]:
        """Roll the prior forward with actions from ``policy_fn(feat [N, F]) -> [N, A]``.

        Args:
            start: ``(h [N, D], z [N, S])``.
            policy_fn: Maps model states to actions.
            horizon: Number of imagined steps H.

        Returns:
            ``(feats [N, H+1, F], actions [N, H, A])``; ``feats[:, 0]`` is the start and
            ``actions[:, t]`` is taken in ``feats[:, t]``.
        """
        deter, stoch = start
        feats = [torch.cat([deter, stoch], -1)]
        actions = []
        for _ in range(horizon):
            action = policy_fn(feats[-1])
            deter, stoch = self.img_step((deter, stoch), action)
            feats.append(torch.cat([deter, stoch], -1))
            actions.append(action)
        return torch.stack(feats, 1), torch.stack(actions, 1)
