"""Loss terms of DreamerV3 as pure tensor functions (no optimiser, no logging).

Sources: the official DreamerV3 code (danijar/dreamerv3, 2024 and later: ``dreamerv3/agent.py``
``imag_loss`` / ``repl_loss`` / ``lambda_return``, ``dreamerv3/rssm.py`` ``RSSM.loss``,
``embodied/jax/outs.py``) and Hafner et al., "Mastering diverse control tasks through world
models", Nature 2025. ``sg`` is stop-gradient (``.detach()``).

Example:
    >>> import torch
    >>> r = torch.zeros(1, 3); c = torch.ones(1, 3); v = torch.tensor([[0.0, 0.0, 2.0]])
    >>> lambda_return(r, c, v, discount=1.0, lam=1.0)
    tensor([[2., 2.]])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from physlink_gym.agents.dreamerv3.distributions import categorical_kl, symlog, twohot_loss
from physlink_gym.errors import ValidationError

__all__ = [
    "bernoulli_nll",
    "kl_dyn_rep",
    "lambda_return",
    "reinforce_actor_loss",
    "symlog_mse",
    "value_loss",
]


def _same_shape(what: str, *tensors: Tensor) -> None:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValidationError(
            got=f"{what} with shapes {[tuple(t.shape) for t in tensors]}",
            expected=f"{what} of one common shape",
            fix="slice or reshape the inputs to the same [B, H] layout",
        )


def kl_dyn_rep(
    post_logits: Tensor, prior_logits: Tensor, free_bits: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Dynamics and representation KL losses with free bits (paper eq. 5; ``RSSM.loss``).

    ``dyn = max(free_bits, KL(sg(post) || prior))`` trains the prior only and
    ``rep = max(free_bits, KL(post || sg(prior)))`` the posterior only. ``free_nats: 1.0`` in
    the reference config; the loss scales (dyn 1.0, rep 0.1) are applied by the caller. Pass
    logits after :func:`~physlink_gym.agents.dreamerv3.distributions.unimix_logits`: the
    reference's ``RSSM._dist`` applies the 1% unimix before taking the KL.

    Args:
        post_logits: Tensor[B, T, L, C] posterior (representation) logits.
        prior_logits: Tensor[B, T, L, C] prior (dynamics) logits.
        free_bits: Lower clamp in nats, summed over the L latents.

    Returns:
        ``(dyn, rep)``, each Tensor[B, T].
    """
    _same_shape("post_logits and prior_logits", post_logits, prior_logits)
    dyn = categorical_kl(post_logits.detach(), prior_logits)
    rep = categorical_kl(post_logits, prior_logits.detach())
    if free_bits:
        dyn = torch.clamp(dyn, min=free_bits)
        rep = torch.clamp(rep, min=free_bits)
    return dyn, rep


def symlog_mse(pred: Tensor, target: Tensor) -> Tensor:
    """``sum_D (pred - sg(symlog(target)))^2`` (decoder loss; reference ``outs.MSE`` + ``Agg``).

    Args:
        pred: Tensor[..., D] predictions in symlog space.
        target: Tensor[..., D] raw targets.

    Returns:
        Tensor[...].
    """
    _same_shape("pred and target", pred, target)
    return torch.square(pred - symlog(target.detach())).sum(-1)


def bernoulli_nll(logits: Tensor, target: Tensor) -> Tensor:
    """``-(t log sigmoid(l) + (1 - t) log sigmoid(-l))`` with ``t = sg(target)`` (``Binary``).

    Args:
        logits: Tensor[...] continue logits.
        target: Tensor[...] in [0, 1] (the reference uses ``1 - is_terminal`` times
            ``1 - 1/horizon`` when ``contdisc`` is on).

    Returns:
        Tensor[...].
    """
    _same_shape("logits and target", logits, target)
    target = target.detach().to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def lambda_return(
    reward: Tensor,
    cont: Tensor,
    value: Tensor,
    discount: float,
    lam: float,
    *,
    last: Tensor | None = None,
) -> Tensor:
    """TD(lambda) returns over an imagined or replayed trajectory (``agent.lambda_return``).

    ``R_{H-1} = value[H-1]`` and, for ``t = H-2 .. 0``,
    ``R_t = reward[t+1] + discount * cont[t+1] * ((1 - lam') value[t+1] + lam' R_{t+1})``
    with ``lam' = lam * (1 - last[t+1])``. ``last`` (default: all zeros, as in ``imag_loss``)
    cuts the recursion at episode ends as ``repl_loss`` does; there ``value`` is the bootstrap
    (the imagined return from each replayed state). Reference defaults: ``lam 0.95``;
    ``discount`` is 1 in imagination with ``contdisc`` and ``1 - 1/333`` on replay.

    Args:
        reward: Tensor[B, H]; ``reward[t]`` is received on entering state t.
        cont: Tensor[B, H] continue probability of state t.
        value: Tensor[B, H] value estimate of state t.
        discount: Discount factor.
        lam: Lambda in [0, 1].
        last: Optional Tensor[B, H] of episode-end flags (replay value loss only).

    Returns:
        Tensor[B, H-1] returns ``R_0 .. R_{H-2}``.
    """
    _same_shape("reward, cont and value", reward, cont, value)
    if reward.ndim != 2 or reward.shape[1] < 2:
        raise ValidationError(
            got=f"shape {tuple(reward.shape)}",
            expected="[B, H] with H >= 2",
            fix="pass the imagined trajectory including its start state",
        )
    live = discount * cont[:, 1:]
    mix = torch.full_like(live, lam)
    if last is not None:
        _same_shape("last and reward", last, reward)
        mix = mix * (1.0 - last[:, 1:].to(mix.dtype))
    # R_t = a_t + b_t * R_{t+1}; a and b are computed for all t at once.
    a = reward[:, 1:] + live * (1.0 - mix) * value[:, 1:]
    b = live * mix
    rets = [value[:, -1]]
    for t in range(a.shape[1] - 1, -1, -1):
        rets.append(a[:, t] + b[:, t] * rets[-1])
    return torch.stack(rets[:0:-1], 1)


def reinforce_actor_loss(
    logp: Tensor, entropy: Tensor, advantage: Tensor, weight: Tensor, entropy_coef: float
) -> Tensor:
    """``mean_{b,t} sg(w) * -(logp * sg(adv) + eta * entropy)`` (paper eq. 11; ``imag_loss``).

    The reference averages over the horizon, then over the batch, and multiplies by the policy
    loss scale 1.0 — i.e. the mean over all B*H entries. ``actent: 3e-4``. The caller passes
    ``advantage = (R - v) / max(1, S)`` and the trajectory weight ``cumprod(cont)``.

    Args:
        logp: Tensor[B, H] log-probability of the taken (imagined) actions.
        entropy: Tensor[B, H] policy entropy.
        advantage: Tensor[B, H] normalised advantage; no gradient flows into it.
        weight: Tensor[B, H] trajectory weight; no gradient flows into it.
        entropy_coef: Entropy regulariser ``eta``.

    Returns:
        Scalar tensor.
    """
    _same_shape("logp, entropy, advantage and weight", logp, entropy, advantage, weight)
    loss = -(logp * advantage.detach() + entropy_coef * entropy) * weight.detach()
    return loss.mean()


def value_loss(
    logits: Tensor,
    target: Tensor,
    slow_target: Tensor,
    bins: Tensor,
    weight: Tensor,
    slow_reg: float = 1.0,
) -> Tensor:
    """Critic loss ``sg(w) * (twohot_ce(sg(R)) + slow_reg * twohot_ce(sg(v_slow)))``.

    Reference ``imag_loss`` / ``repl_loss``: the critic is trained towards the lambda return and
    regularised towards the slow critic's prediction (``slowreg: 1.0``).

    Args:
        logits: Tensor[B, H, K] critic logits.
        target: Tensor[B, H] lambda-return targets.
        slow_target: Tensor[B, H] slow critic's decoded prediction.
        bins: Tensor[K] two-hot bins.
        weight: Tensor[B, H] trajectory weight.
        slow_reg: Weight of the slow-critic regulariser.

    Returns:
        Tensor[B, H].
    """
    _same_shape("target, slow_target and weight", target, slow_target, weight)
    loss = twohot_loss(logits, target.detach(), bins)
    if slow_reg:
        loss = loss + slow_reg * twohot_loss(logits, slow_target.detach(), bins)
    return loss * weight.detach()
