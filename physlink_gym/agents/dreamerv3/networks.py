"""DreamerV3 networks (nn.Modules only): RMSNorm MLPs, the block-GRU RSSM, encoder, heads.

Follows the official code (danijar/dreamerv3, 2024 and later): ``dreamerv3/rssm.py`` (``RSSM``,
``Encoder``, ``Decoder``) and ``embodied/jax/nets.py`` / ``heads.py`` (``Linear``,
``BlockLinear``, ``Norm``, ``MLP``, ``MLPHead``). Every dense layer is ``Linear -> RMSNorm ->
SiLU``; weights are truncated normals with fan-in scaling times a per-layer ``outscale``
(``winit: trunc_normal_in``), biases start at zero.

Shapes: ``...`` batch, ``F = deter + stoch * classes`` (model state), ``A`` action width.
The RSSM lives in :mod:`~physlink_gym.agents.dreamerv3.rssm`.

Example:
    >>> import torch
    >>> norm = RMSNorm(2)
    >>> [round(v, 5) for v in norm(torch.tensor([3.0, 4.0])).tolist()]  # x / sqrt(12.5 + 1e-4)
    [0.84852, 1.13137]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physlink_gym.agents.dreamerv3.config import DreamerV3Config
from physlink_gym.agents.dreamerv3.distributions import (
    categorical_entropy,
    symlog,
    unimix_logits,
)

__all__ = [
    "MLP",
    "Actor",
    "BlockLinear",
    "Decoder",
    "Encoder",
    "MLPHead",
    "RMSNorm",
    "TwoHotHead",
    "fused_heads",
    "init_weight_",
    "linear",
]

# Truncating a unit normal at +-2 leaves a std of 0.8796; the reference multiplies by 1.1368 to
# get back to 1 (embodied/jax/nets.py `Initializer`, dist 'trunc_normal').
_TRUNC_STD_FIX = 1.1368


@torch.no_grad()
def init_weight_(weight: Tensor, fan_in: int, scale: float = 1.0) -> None:
    """Reference ``trunc_normal_in`` init times ``outscale``: ``N(0, 1/fan_in)`` cut at 2 std.

    Args:
        weight: Tensor filled in place.
        fan_in: Input count of the layer (the reference counts all inputs of a block layer).
        scale: The layer's ``outscale`` (0 gives an all-zero weight).
    """
    if scale == 0.0:
        weight.zero_()
        return
    nn.init.trunc_normal_(weight, 0.0, 1.0, -2.0, 2.0)
    weight.mul_(_TRUNC_STD_FIX * scale / math.sqrt(fan_in))


def linear(
    in_features: int, out_features: int, scale: float = 1.0, bias: bool = True, fan_in: int = 0
) -> nn.Linear:
    """``nn.Linear`` with the reference init (trunc-normal fan-in weights, zero bias).

    Args:
        in_features: Input width.
        out_features: Output width.
        scale: ``outscale`` of the weights.
        bias: Whether the layer has a bias.
        fan_in: Fan-in for the init; 0 means ``in_features``.

    Returns:
        The initialised layer.
    """
    layer = nn.Linear(in_features, out_features, bias=bias)
    init_weight_(layer.weight, fan_in or in_features, scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * scale`` over the last axis (reference ``Norm('rms')``).

    The reference computes in float32 with ``eps = 1e-4`` and a learned scale starting at one
    (no shift for ``rms``).

    Args:
        dim: Size of the last axis.
        eps: Added to the mean square.
    """

    def __init__(self, dim: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` [..., dim] (in float32, whatever the input's dtype)."""
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.scale, self.eps)
        out = F.rms_norm(x.float(), (x.shape[-1],), self.scale.float(), self.eps)
        return out.to(x.dtype)


class MLP(nn.Sequential):
    """``layers`` times ``Linear -> RMSNorm -> SiLU`` (reference ``nets.MLP``).

    Args:
        in_features: Input width.
        units: Width of every layer.
        layers: Number of layers (0 gives the identity).
        eps: RMSNorm epsilon.
    """

    def __init__(self, in_features: int, units: int, layers: int, eps: float = 1e-4) -> None:
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [
                linear(in_features if i == 0 else units, units),
                RMSNorm(units, eps),
                nn.SiLU(),
            ]
        super().__init__(*mods)
        self.out_features = units if layers else in_features


class MLPHead(nn.Module):
    """MLP followed by an output layer (reference ``MLPHead``).

    Args:
        in_features: Input width (the model state ``F``).
        units: MLP width.
        layers: MLP depth.
        out_features: Output width.
        outscale: Init scale of the output layer (0: zero-initialised output).
        eps: RMSNorm epsilon.
    """

    def __init__(
        self,
        in_features: int,
        units: int,
        layers: int,
        out_features: int,
        outscale: float = 1.0,
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        self.mlp = MLP(in_features, units, layers, eps)
        self.out = linear(self.mlp.out_features, out_features, scale=outscale)

    def forward(self, x: Tensor) -> Tensor:
        """Map [..., in_features] to float32 [..., out_features].

        Under bfloat16 autocast the layers compute in bfloat16 and the output is cast to float32,
        as the reference's output distributions do (``embodied/jax/outs.py``: ``f32(logits)``),
        so that the distribution math after it (two-hot decode, continue probability, action
        sampling) stays float32; in float32 the cast is a no-op.
        """
        return self.output(self.mlp(x))

    def output(self, h: Tensor) -> Tensor:
        """The output layer on the MLP's features ``h``, cast to float32."""
        out: Tensor = self.out(h)
        return out.float()


def fused_heads(heads: Sequence[MLPHead], x: Tensor) -> list[Tensor]:
    """``[head(x) for head in heads]``, with the heads' first layers as one matrix product.

    The heads that read all imagined states (critic, actor, reward, continue, slow critic)
    each start with a ``units``-wide layer over the same input; one product with their
    weights concatenated keeps a CPU's vector units busier than one narrow product per head
    (measured in docs/benchmarks/speed.md). Heads without an MLP layer run on their own.
    Same function as the heads one by one, to float32 rounding.
    """
    deep = [h for h in heads if len(h.mlp)]
    if len(deep) < 2:
        return [h(x) for h in heads]
    firsts = [cast(nn.Linear, h.mlp[0]) for h in deep]  # MLP layers start with a Linear
    weight = torch.cat([f.weight for f in firsts])
    bias = torch.cat([f.bias for f in firsts])
    widths = [f.out_features for f in firsts]
    parts = iter(torch.split(F.linear(x, weight, bias), widths, -1))
    outs = []
    for head in heads:
        if not len(head.mlp):
            outs.append(head(x))
            continue
        h = next(parts)
        for layer in list(head.mlp)[1:]:
            h = layer(h)
        outs.append(head.output(h))
    return outs


class TwoHotHead(MLPHead):
    """:class:`MLPHead` over two-hot bins whose output is padded to a multiple of 8 columns.

    The parameters are those of an ``out_features``-wide output layer (the reference's 255
    bins), but the matrix product runs on a copy padded with zero weights and a bias of
    -1e9, so the logits are [..., 256] and the extra column carries no probability (its
    softmax weight underflows to exactly 0). Matrix products and softmaxes over a
    power-of-two width vectorise fully on a CPU, an odd width does not; every consumer of
    these logits reads only the first ``out_features`` columns' probabilities.
    """

    PAD_LOGIT = -1e9

    def output(self, h: Tensor) -> Tensor:
        """Padded logits [..., ceil(out_features / 8) * 8] (float32) of the MLP's features."""
        pad = -self.out.out_features % 8
        if not pad:
            return super().output(h)
        weight = F.pad(self.out.weight, (0, 0, 0, pad))
        bias = F.pad(self.out.bias, (0, pad), value=self.PAD_LOGIT)
        return F.linear(h, weight, bias).float()


class BlockLinear(nn.Module):
    """Block-diagonal linear layer (reference ``nets.BlockLinear``).

    The input and output are split into ``blocks`` equal groups; group ``g`` of the output
    depends only on group ``g`` of the input. As in the reference, the init counts the whole
    input as fan-in.

    Args:
        in_features: Input width (multiple of ``blocks``).
        out_features: Output width (multiple of ``blocks``).
        blocks: Number of groups.
    """

    def __init__(self, in_features: int, out_features: int, blocks: int) -> None:
        super().__init__()
        if in_features % blocks or out_features % blocks:
            raise ValueError(f"{in_features} and {out_features} must divide by {blocks}")
        self.blocks = blocks
        self.weight = nn.Parameter(
            torch.empty(blocks, in_features // blocks, out_features // blocks)
        )
        self.bias = nn.Parameter(torch.zeros(out_features))
        init_weight_(self.weight, in_features)

    def forward(self, x: Tensor) -> Tensor:
        """Map [N, in] to [N, out] (2-D input)."""
        g, i, o = self.weight.shape
        y = torch.bmm(x.reshape(-1, g, i).transpose(0, 1), self.weight)  # [g, N, o]
        return y.transpose(0, 1).reshape(-1, g * o) + self.bias


class Encoder(nn.Module):
    """``MLP(symlog(obs))`` with ``enc_layers`` layers (reference ``rssm.Encoder``, vectors).

    Args:
        obs_dim: Observation width.
        cfg: ``units``, ``enc_layers``, ``norm_eps``.
    """

    def __init__(self, obs_dim: int, cfg: DreamerV3Config) -> None:
        super().__init__()
        self.mlp = MLP(obs_dim, cfg.units, cfg.enc_layers, cfg.norm_eps)
        self.out_features = self.mlp.out_features

    def forward(self, obs: Tensor) -> Tensor:
        """Embed raw observations [..., obs_dim] -> [..., units]."""
        out: Tensor = self.mlp(symlog(obs))
        return out


class Decoder(MLPHead):
    """``MLP(concat(h, z)) -> obs_dim`` predicting ``symlog(obs)`` (reference ``rssm.Decoder``).

    Args:
        obs_dim: Observation width.
        cfg: ``units``, ``dec_layers``, ``dec_outscale``.
    """

    def __init__(self, obs_dim: int, cfg: DreamerV3Config) -> None:
        super().__init__(
            cfg.feat_dim, cfg.units, cfg.dec_layers, obs_dim, cfg.dec_outscale, cfg.norm_eps
        )


class Actor(MLPHead):
    """Policy head (reference ``policy`` MLPHead): bounded normal or unimix categoricals.

    Continuous: ``2A`` outputs (mean, std) for :func:`bounded_normal`. Discrete: one categorical
    per action group, its logits mixed with ``actor_unimix`` uniform (over that group's own
    choices), as the reference does for each dimension of a multi-discrete action; actions are
    one-hot per group. ``Discrete(n)`` is one group of ``n``, ``MultiDiscrete(nvec)`` one group
    per entry, ``MultiBinary(n)`` ``n`` groups of 2 (a Bernoulli each). The groups are laid
    out ``[G, K]`` with ``K = max(groups)``: a group smaller than ``K`` has padded choices that
    are never taken (probability 0) and its one-hot is zero there. Output init scale 0.01.

    Args:
        cfg: Sizes and policy settings.
        action_dim: ``A``: the continuous dimensions, or ``G * K`` for discrete groups.
        discrete: Whether the actions are discrete.
        groups: The choices of each discrete group; ``None`` with ``discrete`` means one group
            of ``action_dim`` (a ``Discrete`` space).
    """

    _mask: Tensor | None
    _sizes: Tensor
    _last: Tensor

    def __init__(self, cfg: DreamerV3Config, action_dim: int, discrete: bool,
                 groups: tuple[int, ...] | None = None) -> None:
        out = action_dim if discrete else 2 * action_dim
        super().__init__(
            cfg.feat_dim, cfg.units, cfg.actor_layers, out, cfg.actor_outscale, cfg.norm_eps
        )
        self.discrete = discrete
        self.groups = (groups or (action_dim,)) if discrete else ()
        width = max(self.groups, default=1)
        if discrete and len(self.groups) * width != action_dim:
            raise ValueError(f"action_dim {action_dim} is not {len(self.groups)} groups x "
                             f"{width} choices")
        self.shape = (len(self.groups), width)
        sizes = torch.tensor(self.groups or (1,))
        mask = torch.arange(width) < sizes[:, None]  # [G, K]: the choices that exist
        self.register_buffer("_mask", None if bool(mask.all()) else mask, persistent=False)
        self.register_buffer("_sizes", sizes.float()[:, None], persistent=False)
        self.register_buffer("_last", (sizes - 1)[:, None], persistent=False)
        self.unimix = cfg.actor_unimix
        self.minstd, self.maxstd = cfg.actor_minstd, cfg.actor_maxstd

    def _logp(self, raw: Tensor) -> Tensor:
        """Log-probabilities ``[..., G, K]`` of each group.

        0 at padded choices, which have probability 0: :meth:`sample` never takes them and the
        losses skip them.
        """
        x = raw.reshape(*raw.shape[:-1], *self.shape)
        if self._mask is None:  # groups of one size: no padding
            return torch.log_softmax(unimix_logits(x, self.unimix), -1)
        probs = torch.softmax(x.masked_fill(~self._mask, -torch.inf), -1)
        if self.unimix:
            probs = (1.0 - self.unimix) * probs + self.unimix * self._mask / self._sizes
        # log(1) = 0 where a choice does not exist: no -inf, no NaN in any gradient
        return torch.log(torch.where(self._mask, probs, 1.0))

    def _normal(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of :func:`bounded_normal`, without the distribution object."""
        mean_raw, std_raw = raw.chunk(2, dim=-1)
        std = (self.maxstd - self.minstd) * torch.sigmoid(std_raw + 2.0) + self.minstd
        return torch.tanh(mean_raw), std

    def noise(self, *shape: int, device: torch.device | None = None) -> Tensor:
        """Noise for ``shape`` samples: standard normal [*shape, A], or uniform [*shape, G]."""
        if self.discrete:
            return torch.rand(*shape, len(self.groups), device=device)
        return torch.randn(*shape, self.out.out_features // 2, device=device)

    def sample(
        self, raw: Tensor, deterministic: bool = False, noise: Tensor | None = None
    ) -> Tensor:
        """Action [..., A] from head outputs (no gradient): a sample, or the mode.

        Args:
            raw: Head outputs [..., out].
            deterministic: Take the mode (the mean, or each group's most likely choice).
            noise: From :meth:`noise`; drawn here when None. Continuous samples are
                ``mean + std * noise``; discrete ones invert each group's CDF at its uniform
                ``noise``.
        """
        raw = raw.detach()
        if self.discrete:
            logp = self._logp(raw)  # [..., G, K]
            probs = logp.exp()
            if self._mask is not None:
                probs = probs * self._mask
            if deterministic:
                index = (logp if self._mask is None else probs).argmax(-1, keepdim=True)
            else:
                if noise is None:
                    noise = self.noise(*raw.shape[:-1], device=raw.device)
                cdf = probs.cumsum(-1)
                index = torch.minimum((cdf < noise.unsqueeze(-1)).sum(-1, keepdim=True),
                                      self._last)
            return torch.zeros_like(logp).scatter_(-1, index, 1.0).flatten(-2)
        mean, std = self._normal(raw)
        if deterministic:
            return mean
        if noise is None:
            noise = self.noise(*raw.shape[:-1], device=raw.device)
        return mean + std * noise

    def log_prob_entropy(self, raw: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """``(log pi(action), entropy)``, each [...], summed over action dimensions (groups)."""
        if self.discrete:
            logp = self._logp(raw)  # 0 at padded choices: no term in either sum
            one_hot = action.reshape(*action.shape[:-1], *self.shape)
            return (logp * one_hot).sum((-2, -1)), categorical_entropy(logp, self._mask).sum(-1)
        mean, std = self._normal(raw)
        log_std = torch.log(std)
        log_prob = (-0.5 * torch.square((action - mean) / std) - log_std).sum(-1)
        # Normal: log N(a; m, s) = -((a - m) / s)^2 / 2 - log s - log(2 pi) / 2, and
        # entropy = 1/2 + log(2 pi) / 2 + log s; summed over the A dimensions.
        return log_prob - _HALF_LOG_2PI * action.shape[-1], (0.5 + _HALF_LOG_2PI + log_std).sum(-1)


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
