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

import logging
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

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

_LOG = logging.getLogger(__name__)


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
        deter_g = deter.view(n, g, dg).transpose(0, 1)  # [g, N, D/g] view, group-major
        y = self.hid_in(x).view(n, g, dg) + torch.bmm(deter_g, self.hid_rec).transpose(0, 1)
        y = F.silu(self.hid_norm(y.reshape(n, d)))
        for layer in self.hid_more:
            y = layer(y)
        # Gates per group, computed and combined group-major to avoid layout copies.
        w = self.gates.weight  # [g, D/g, 3 D/g]
        bias = self.gates.bias.view(g, 1, 3 * dg)
        gates = torch.baddbmm(bias, y.view(n, g, dg).transpose(0, 1), w)  # [g, N, 3 D/g]
        reset, cand, update = gates.chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1.0)
        new = update * cand + (1.0 - update) * deter_g  # [g, N, D/g]
        return new.transpose(0, 1).reshape(n, d)


class Posterior(NamedTuple):
    """Posterior states of an observed sequence, each [B, T, ...]."""

    deter: Tensor  # [B, T, D]
    stoch: Tensor  # [B, T, S] straight-through one-hot samples
    logits: Tensor  # [B, T, L, C] unimixed log-probabilities


def sample_latent(logp: Tensor, noise: Tensor | None = None) -> Tensor:
    """Straight-through one-hot sample of [..., L, C] log-probabilities, flattened to [..., L*C].

    Samples by inverting the CDF with one uniform number per latent (``index = #(cdf < u)``),
    which is exact and lets the caller draw the noise of a whole sequence at once. The forward
    value is one-hot; the gradient is that of the probabilities (reference
    ``OneHot._onehot_with_grad``).

    Args:
        logp: Normalised log-probabilities [..., L, C] (after unimix).
        noise: Optional uniform [0, 1) noise of shape [..., L, 1].

    Returns:
        Tensor [..., L*C].
    """
    probs = logp.exp()
    if noise is None:
        noise = torch.rand(*probs.shape[:-1], 1, device=probs.device)
    cdf = probs.detach().cumsum(-1)
    index = (cdf < noise).sum(-1, keepdim=True).clamp_(max=probs.shape[-1] - 1)
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
        self.compiled = cfg.compile  # torch.compile the scan steps (see `_step_fn`)
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
        """Unimixed log-probabilities [..., L, C] (reference ``OneHot(logits, unimix)``)."""
        raw = raw.reshape(*raw.shape[:-1], self.latents, self.classes).float()
        if self.classes >= 16 or not self.unimix:
            return unimix_logits(raw, self.unimix)
        # Same numbers as `unimix_logits`, written out: torch.softmax over a last axis of a
        # few classes is about 3x slower on CPU than these elementwise ops (1m preset: C = 4).
        e = (raw - raw.amax(-1, keepdim=True).detach()).exp()
        probs = e / e.sum(-1, keepdim=True)
        return torch.log((1.0 - self.unimix) * probs + self.unimix / self.classes)

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
        act_embed = self.core.embed_action(action * keep)
        noise = torch.rand(embed.shape[0], self.latents, 1, device=embed.device)
        return _posterior_step(
            self, state[0], state[1], keep, act_embed, self.obs_embed(embed), noise
        )

    def img_step(self, state: tuple[Tensor, Tensor], action: Tensor) -> tuple[Tensor, Tensor]:
        """One prior step ``(h, z), a -> (h', z')`` (reference ``RSSM.imagine``, single)."""
        noise = torch.rand(action.shape[0], self.latents, 1, device=action.device)
        return _prior_step(self, state[0], state[1], action, noise)

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
        noise = torch.rand(b, t, self.latents, 1, device=embed.device)
        step = _step_fn(_posterior_step, self.compiled)
        deter, stoch = state
        deters, stochs, logps = [], [], []
        for i in range(t):
            deter, stoch, logp = step(
                self, deter, stoch, keep[:, i], act_embed[:, i], embed_part[:, i], noise[:, i]
            )
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

        Outputs are time-major so that every time slice, and the slices ``[1:]`` and ``[:-1]``,
        are contiguous (row-wise heads then run on them without copies).

        Args:
            start: ``(h [N, D], z [N, S])``.
            policy_fn: Maps model states to actions.
            horizon: Number of imagined steps H.

        Returns:
            ``(feats [H+1, N, F], actions [H, N, A])``; ``feats[0]`` is the start and
            ``actions[t]`` is taken in ``feats[t]``.
        """
        deter, stoch = start
        noise = torch.rand(horizon, deter.shape[0], self.latents, 1, device=deter.device)
        step = _step_fn(_prior_step, self.compiled)
        feats = [torch.cat([deter, stoch], -1)]
        actions = []
        for t in range(horizon):
            action = policy_fn(feats[-1])
            deter, stoch = step(self, deter, stoch, action, noise[t])
            feats.append(torch.cat([deter, stoch], -1))
            actions.append(action)
        return torch.stack(feats), torch.stack(actions)


def _posterior_step(
    rssm: RSSM,
    deter: Tensor,
    stoch: Tensor,
    keep: Tensor,
    act_embed: Tensor,
    embed_part: Tensor,
    noise: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Reset (``keep = 0``), GRU step, posterior and its sample: one step of the scan."""
    deter = rssm.core(deter * keep, stoch * keep, act_embed)
    logp = rssm._post(deter, embed_part)
    return deter, sample_latent(logp, noise), logp


def _prior_step(
    rssm: RSSM, deter: Tensor, stoch: Tensor, action: Tensor, noise: Tensor
) -> tuple[Tensor, Tensor]:
    """GRU step on an action, prior and its sample: one step of imagination."""
    deter = rssm.core(deter, stoch, rssm.core.embed_action(action))
    return deter, sample_latent(rssm.prior(deter), noise)


class _Compiled:
    """``torch.compile(fn)`` that falls back to ``fn`` for good if compiling or running fails.

    A missing or broken C++ toolchain must not stop training: the first failure warns once and
    every later call runs eagerly (a genuine error then re-raises from the eager call).
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.compiled = torch.compile(fn, dynamic=False)
        self.failed = False
        self.announced = False

    def __call__(self, *args: Any) -> Any:
        if not self.failed:
            if not self.announced:
                self.announced = True
                _LOG.info("torch.compile of %s: the first update compiles it", self.fn.__name__)
            try:
                return self.compiled(*args)
            except Exception as exc:  # any compiler failure: run eagerly
                self.failed = True
                warnings.warn(
                    f"torch.compile of {self.fn.__name__} failed ({type(exc).__name__}: {exc}); "
                    "running eagerly. Set compile=False to skip the attempt.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.fn(*args)


_COMPILED: dict[Callable[..., Any], _Compiled] = {}


def _step_fn(fn: Callable[..., Any], compiled: bool) -> Callable[..., Any]:
    """``fn`` itself, or its compiled version (built once per process, fixed shapes).

    The functions take the module as an argument rather than being bound methods, so copies of
    a module (``copy.deepcopy``) never call into the original's compiled graph.
    """
    if not compiled:
        return fn
    if fn not in _COMPILED:
        _COMPILED[fn] = _Compiled(fn)
    return _COMPILED[fn]
