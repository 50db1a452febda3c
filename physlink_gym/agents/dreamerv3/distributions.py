"""Distributions of DreamerV3 as pure tensor functions.

Everything here follows the official DreamerV3 code (danijar/dreamerv3, 2024 and later;
``embodied/jax/outs.py``, ``embodied/jax/heads.py``, ``embodied/jax/nets.py``) and the paper
(Hafner et al., "Mastering diverse control tasks through world models", Nature 2025).

Shapes: ``...`` is any batch shape, ``K`` the number of two-hot bins, ``C`` the classes of a
categorical, ``L`` the number of categorical latents, ``A`` the action dimensions.

Example:
    >>> import torch
    >>> bins = twohot_bins()
    >>> float(twohot_mean(torch.zeros(3, 255), bins).abs().max())
    0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Independent, Normal

from physlink_gym.errors import ValidationError

__all__ = [
    "bounded_normal",
    "categorical_entropy",
    "categorical_kl",
    "sample_onehot_st",
    "symexp",
    "symlog",
    "twohot_bins",
    "twohot_encode",
    "twohot_loss",
    "twohot_mean",
    "twohot_mean_from_probs",
    "twohot_weights",
    "unimix_logits",
]


def symlog(x: Tensor) -> Tensor:
    """``sign(x) * log(1 + |x|)`` (paper eq. 9; reference ``nets.symlog``).

    Args:
        x: Tensor of any shape.

    Returns:
        Tensor of the same shape.
    """
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    """``sign(x) * (exp(|x|) - 1)``, the inverse of :func:`symlog` (reference ``nets.symexp``).

    Args:
        x: Tensor of any shape.

    Returns:
        Tensor of the same shape.
    """
    return torch.sign(x) * torch.expm1(torch.abs(x))


def twohot_bins(
    num_bins: int = 255,
    low: float = -20.0,
    high: float = 20.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Bin positions ``symexp(linspace(low, high, K))`` of the two-hot heads.

    Defaults: 255 bins over symlog range [-20, 20] (reference ``Head.symexp_twohot``,
    ``configs.yaml`` ``rewhead.bins`` / ``value.bins``). The reference builds one half and
    mirrors it so the bins are exactly antisymmetric with an exact 0 in the centre; we do the same
    (in float64, then cast) whenever ``low == -high``. For an even ``num_bins`` the reference
    mirrors ``linspace(-20, 0, K/2)`` and so holds 0 twice; we keep ``symexp(linspace(...))``.

    Args:
        num_bins: ``K`` >= 2.
        low: Lowest bin in symlog space.
        high: Highest bin in symlog space (> low).
        device: Device of the result.
        dtype: Floating dtype of the result.

    Returns:
        Tensor[K], strictly increasing.

    Raises:
        ValidationError: for fewer than 2 bins or ``high <= low``.
    """
    if num_bins < 2 or not high > low:
        raise ValidationError(
            got=f"num_bins={num_bins}, low={low}, high={high}",
            expected="num_bins >= 2 and high > low",
            fix="pass e.g. twohot_bins(255, -20.0, 20.0)",
        )
    x = torch.linspace(low, high, num_bins, dtype=torch.float64)
    if low == -high:
        x = 0.5 * (x - x.flip(0))  # exact antisymmetry; exact 0 in the centre for odd K
    return symexp(x).to(device=device, dtype=dtype)


def _check_bins(values: Tensor, bins: Tensor, what: str, padded: bool = False) -> None:
    width = values.shape[-1]
    if bins.ndim != 1 or not (width == bins.shape[0] or (padded and width > bins.shape[0])):
        raise ValidationError(
            got=f"{what} of shape {tuple(values.shape)} with bins of shape {tuple(bins.shape)}",
            expected=f"bins of shape [K] and {what} of shape [..., K]",
            fix="build the bins with twohot_bins(K) where K is the head's output size",
        )


def twohot_weights(x: Tensor, bins: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Indices and weights ``(below, above, w_below, w_above)`` of the two neighbouring bins.

    Reference ``TwoHot.loss``. The input is detached.

    ``below = #(bins <= x) - 1`` and ``above = K - #(bins > x)``, clipped to ``[0, K-1]``;
    the weights are the opposite distances normalised to sum to one, and a value outside the
    range (``below == above``) gets ``0.5 + 0.5`` on the end bin.
    """
    k = bins.shape[0]
    x = x.detach().to(bins.dtype)
    above = torch.searchsorted(bins, x.contiguous(), right=True)  # = #(bins <= x)
    below = (above - 1).clamp(0, k - 1)
    above = above.clamp(0, k - 1)
    equal = below == above
    one = torch.ones_like(x)
    dist_below = torch.where(equal, one, (bins[below] - x).abs())
    dist_above = torch.where(equal, one, (bins[above] - x).abs())
    total = dist_below + dist_above
    return below, above, dist_above / total, dist_below / total


def twohot_encode(x: Tensor, bins: Tensor) -> Tensor:
    """Two-hot encoding of ``x`` over ``bins`` (reference ``TwoHot.loss``).

    A value on a bin gives weight 1 there, a value between two bins splits linearly (a midpoint
    gives 0.5/0.5), values outside the range go to the end bin. The input is detached.

    Args:
        x: Tensor[...] of targets in raw (not symlog) space.
        bins: Tensor[K] from :func:`twohot_bins`.

    Returns:
        Tensor[..., K] whose last axis sums to one.
    """
    below, above, w_below, w_above = twohot_weights(x, bins)
    out = torch.zeros(*x.shape, bins.shape[0], dtype=bins.dtype, device=bins.device)
    out.scatter_add_(-1, below.unsqueeze(-1), w_below.unsqueeze(-1))
    out.scatter_add_(-1, above.unsqueeze(-1), w_above.unsqueeze(-1))
    return out


def twohot_mean(logits: Tensor, bins: Tensor, symmetric: bool | None = None) -> Tensor:
    """Expected value ``sum_k softmax(logits)_k * bins_k`` (reference ``TwoHot.pred``).

    For bins that are exactly antisymmetric around an exact 0 in the centre (those of
    :func:`twohot_bins` with ``low == -high`` and an odd count) the sum is taken in the
    symmetric-difference form ``sum_{i>0} (p_{m+i} - p_{m-i}) * b_{m+i}`` (``m`` the centre):
    one matrix-vector product over half the bins. As in the reference, whose sum runs from the
    centre outwards, symmetric logits then decode to exactly 0.0 instead of a rounding residue.

    Args:
        logits: Tensor[..., K], or wider: trailing columns past the K bins are padding that
            must carry no probability (a logit of -1e9, as the learner's padded heads give).
        bins: Tensor[K].
        symmetric: Whether ``bins`` are antisymmetric with an odd count; ``None`` checks
            (a host-side comparison: hot paths that know pass True).

    Returns:
        Tensor[...].
    """
    _check_bins(logits, bins, "logits", padded=True)
    n = bins.shape[0]
    if symmetric is None:
        symmetric = n % 2 == 1 and bool(torch.equal(bins, -bins.flip(0)))
    return twohot_mean_from_probs(torch.softmax(logits, -1), bins, symmetric)


def twohot_mean_from_probs(probs: Tensor, bins: Tensor, symmetric: bool) -> Tensor:
    """:func:`twohot_mean` of probabilities [..., K] (or padded wider with zero probability)."""
    n = bins.shape[0]
    m = n // 2
    if symmetric:
        diff = probs[..., m + 1 : n] - probs[..., :m].flip(-1)
        return diff @ bins[m + 1 :].to(probs.dtype)
    return probs[..., :n] @ bins.to(probs.dtype)


def twohot_loss(logits: Tensor, target: Tensor, bins: Tensor, normalized: bool = False) -> Tensor:
    """Cross-entropy ``-sum_k twohot(sg(target))_k * log_softmax(logits)_k`` (``TwoHot.loss``).

    Computed by gathering the two non-zero entries instead of materialising the [..., K] target.

    Args:
        logits: Tensor[..., K], or wider: trailing columns past the K bins are padding that
            carries no probability (e.g. an output layer padded to 256 columns for speed).
        target: Tensor[...] in raw space; no gradient flows into it.
        bins: Tensor[K].
        normalized: The logits are already log-probabilities (``log_softmax`` output), e.g.
            shared by two targets; they are then used as they are.

    Returns:
        Tensor[...] of losses.
    """
    _check_bins(logits, bins, "logits", padded=True)
    if logits.shape[:-1] != target.shape:
        raise ValidationError(
            got=f"logits {tuple(logits.shape)} and target {tuple(target.shape)}",
            expected="logits of shape target.shape + (K,)",
            fix="pass one scalar target per logits vector",
        )
    below, above, w_below, w_above = twohot_weights(target, bins)
    logp = logits if normalized else torch.log_softmax(logits, -1)
    lp_below = logp.gather(-1, below.unsqueeze(-1)).squeeze(-1)
    lp_above = logp.gather(-1, above.unsqueeze(-1)).squeeze(-1)
    return -(w_below.to(logp.dtype) * lp_below + w_above.to(logp.dtype) * lp_above)


def unimix_logits(logits: Tensor, unimix: float = 0.01) -> Tensor:
    """``log((1 - u) * softmax(logits) + u / C)`` (reference ``outs.Categorical``; paper: 1%).

    With ``unimix == 0`` the logits are returned unchanged, as in the reference.

    Args:
        logits: Tensor[..., C].
        unimix: Mixing weight ``u`` of the uniform distribution, in [0, 1].

    Returns:
        Tensor[..., C] of normalised log-probabilities, each >= log(u / C).
    """
    if not 0.0 <= unimix <= 1.0:
        raise ValidationError(
            got=f"unimix={unimix}", expected="0 <= unimix <= 1", fix="pass unimix=0.01"
        )
    if unimix == 0.0:
        return logits
    probs = torch.softmax(logits, -1)
    probs = (1.0 - unimix) * probs + unimix / logits.shape[-1]
    return torch.log(probs)


def sample_onehot_st(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One-hot sample with straight-through gradients (reference ``OneHot._onehot_with_grad``).

    ``value = sg(onehot) + probs - sg(probs)``: the forward value is exactly one-hot and the
    gradient is that of ``softmax(logits)``. The sample is drawn by the Gumbel-max trick. Pass
    :func:`unimix_logits` output for the latents and the discrete policy, as the reference
    samples from the mixed distribution.

    Args:
        logits: Tensor[..., C].
        generator: Optional random generator.

    Returns:
        Tensor[..., C].
    """
    probs = torch.softmax(logits, -1)
    # Gumbel-max: argmax(logits + G), G = -log(E), E ~ Exp(1), is an exact categorical sample
    # and much faster than torch.multinomial for many small rows.
    noise = torch.empty_like(logits, dtype=probs.dtype).exponential_(generator=generator)
    index = (logits.detach() - noise.log()).argmax(-1)
    onehot = F.one_hot(index, logits.shape[-1]).to(probs.dtype)
    return onehot + (probs - probs.detach())


def categorical_kl(lhs_logits: Tensor, rhs_logits: Tensor) -> Tensor:
    """``KL(lhs || rhs)`` summed over latents and classes (``Categorical.kl`` + ``Agg`` sum).

    Args:
        lhs_logits: Tensor[..., L, C].
        rhs_logits: Tensor[..., L, C].

    Returns:
        Tensor[...].
    """
    if lhs_logits.shape != rhs_logits.shape or lhs_logits.ndim < 2:
        raise ValidationError(
            got=f"shapes {tuple(lhs_logits.shape)} and {tuple(rhs_logits.shape)}",
            expected="two logits tensors of the same shape [..., L, C]",
            fix="pass posterior and prior logits reshaped to [..., latents, classes]",
        )
    lhs_logp = torch.log_softmax(lhs_logits, -1)
    rhs_logp = torch.log_softmax(rhs_logits, -1)
    return (lhs_logp.exp() * (lhs_logp - rhs_logp)).sum((-2, -1))


def categorical_entropy(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """``-sum_c p_c log p_c`` over the last axis (reference ``Categorical.entropy``).

    Args:
        logits: Tensor[..., C].
        mask: Optional bool Tensor broadcastable to ``logits``: ``logits`` are then normalised
            log-probabilities whose False entries do not exist (probability 0, no term).

    Returns:
        Tensor[...].
    """
    if mask is not None:
        return -(torch.where(mask, logits.exp() * logits, 0.0)).sum(-1)
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def bounded_normal(raw: Tensor, minstd: float = 0.1, maxstd: float = 1.0) -> Independent[Normal]:
    """Continuous policy ``Normal(tanh(m), (maxstd - minstd) * sigmoid(s + 2) + minstd)``.

    Reference ``Head.bounded_normal`` (two linear outputs ``mean`` and ``stddev``; ``policy``
    config ``minstd: 0.1, maxstd: 1.0``), wrapped in ``Agg`` so entropy and log-probability sum
    over the action dimensions. The reference samples are not squashed or clipped.

    Args:
        raw: Tensor[..., 2A]: the first A entries are ``m``, the last A are ``s``.
        minstd: Lowest standard deviation (> 0).
        maxstd: Highest standard deviation (>= minstd).

    Returns:
        ``Independent(Normal, 1)`` with batch shape [...] and event shape [A].
    """
    if raw.shape[-1] % 2 != 0 or raw.shape[-1] == 0 or not 0.0 < minstd <= maxstd:
        raise ValidationError(
            got=f"raw of shape {tuple(raw.shape)}, minstd={minstd}, maxstd={maxstd}",
            expected="raw of shape [..., 2A] and 0 < minstd <= maxstd",
            fix="give the policy head 2 * action_dim outputs (mean, then std)",
        )
    mean_raw, std_raw = raw.chunk(2, dim=-1)
    std = (maxstd - minstd) * torch.sigmoid(std_raw + 2.0) + minstd
    return Independent(
        Normal(torch.tanh(mean_raw), std, validate_args=False), 1, validate_args=False
    )
