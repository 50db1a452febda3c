"""Behaviour learning of DreamerV3: imagination, REINFORCE actor, critic, replay value loss.

Mirrors ``imag_loss`` and ``repl_loss`` of the official ``dreamerv3/agent.py`` (2024 and later)
and Hafner et al., Nature 2025 (eqs. 10-12). Gradients stop exactly where the reference's do:

* imagination starts from ``sg(posterior)`` (``ac_grads: False``) and every imagined state is
  ``sg``: the rollout runs under ``torch.no_grad`` and the heads are re-applied afterwards, so
  no behaviour loss reaches the world model;
* the actor learns only through ``log pi(sg(a) | sg(s)) * sg(adv)`` plus its entropy;
* the critic learns from ``sg`` lambda returns and the ``sg`` slow critic's prediction;
* the replay value loss reads the replayed posterior states *with* gradient into the world
  model (``repval_grad: True``), as the reference does.

Masks: ``valid`` [B, T] weights the imagination starts and the replayed steps; every loss is a
mean over valid entries only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from physlink_gym.agents.dreamerv3.distributions import twohot_mean
from physlink_gym.agents.dreamerv3.losses import lambda_return, reinforce_actor_loss, value_loss

if TYPE_CHECKING:  # pragma: no cover
    from physlink_gym.agents.dreamerv3.learner import DreamerV3Learner
    from physlink_gym.agents.dreamerv3.rssm import Posterior

__all__ = ["imagination_losses", "masked_mean", "replay_returns", "replay_value_loss"]

Metrics = dict[str, Tensor]


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over entries where ``mask`` (broadcast to ``x``) is non-zero.

    Args:
        x: Tensor of any shape.
        mask: Float tensor broadcastable to ``x``; 0 drops an entry.

    Returns:
        0-d tensor (0 when nothing is valid).
    """
    mask = mask.expand_as(x)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def _rollout(m: DreamerV3Learner, post: Posterior) -> tuple[Tensor, ...]:
    """Imagine from every posterior state (no gradient into the model or the start).

    The actor's outputs keep their graph (the loss needs ``log pi`` of the sampled actions
    with gradient, and re-running the actor on the same ``sg`` states would give the same
    numbers); everything else runs under ``no_grad``. All outputs are time-major.

    Returns:
        ``feats [H+1, N, F]``, ``actions [H, N, A]``, actor outputs ``raw [H, N, .]`` (with
        grad), ``reward [H+1, N]`` (entry 0 unused, set to 0) and continue probabilities
        ``cont [H+1, N]``.
    """
    cfg = m.config
    raws: list[Tensor] = []

    def policy(feat: Tensor) -> Tensor:
        with torch.enable_grad():
            raws.append(m.actor(feat))
        return m.actor.sample(raws[-1])  # detached

    with torch.no_grad():
        start = (post.deter.flatten(0, 1), post.stoch.flatten(0, 1))  # [N, D], [N, S]; N = B*T
        feats, actions = m.rssm.imagine(start, policy, cfg.imag_horizon)
        reward = twohot_mean(m.reward_head(feats[1:]), m.bins)  # reward[0] is never used
        reward = torch.cat([torch.zeros_like(reward[:1]), reward])
        cont = torch.sigmoid(m.cont_head(feats).squeeze(-1))  # reference `con.prob(1)`
    return feats, actions, torch.stack(raws), reward, cont


def imagination_losses(
    m: DreamerV3Learner, post: Posterior, valid: Tensor
) -> tuple[dict[str, Tensor], Metrics, Tensor]:
    """Actor and critic losses on trajectories imagined from the replayed posteriors.

    Args:
        m: The learner (its RSSM, heads, actor, critics, return normaliser).
        post: Posterior states [B, T, ...] of the replayed batch.
        valid: [B, T] float mask of the starts.

    Returns:
        ``({"policy", "value"}, metrics, ret [H, N])``: scalar losses (means over valid starts
        and the horizon), metrics, and the detached lambda returns (time-major; N = B*T).
    """
    cfg = m.config
    feats, actions, raw, reward, cont = _rollout(m, post)  # time-major [H(+1), N, ...]
    start_w = valid.reshape(1, -1)  # [1, N]
    value_logits = m.critic(feats[:-1])  # [H, N, K]: the critic's only forward with grad
    with torch.no_grad():
        value = torch.cat(
            [twohot_mean(value_logits, m.bins), twohot_mean(m.critic(feats[-1:]), m.bins)]
        )  # [H+1, N]
        slow = twohot_mean(m.slow_critic(feats), m.bins)  # [H+1, N]
        tarval = slow if cfg.slow_target else value
        # contdisc: the continue head already holds the discount (reference `imag_loss`).
        disc = 1.0 if cfg.contdisc else cfg.discount
        ret = lambda_return(reward.t(), cont.t(), tarval.t(), disc, cfg.lam).t()  # [H, N]
        weight = torch.cumprod(disc * cont, 0) / disc * start_w  # [H+1, N]
        chosen = ret[:, valid.reshape(-1) > 0]
        if chosen.numel():
            m.retnorm.update(chosen)
        scale = m.retnorm.scale()
        adv = (ret - tarval[:-1]) / scale
    logp, ent = m.actor.log_prob_entropy(raw, actions)  # [H, N]
    # reinforce_actor_loss averages over all N*H entries; rescale to a mean over valid starts.
    n_valid = valid.sum().clamp(min=1.0)
    policy = reinforce_actor_loss(logp, ent, adv, weight[:-1], cfg.actent)
    policy = policy * (valid.numel() / n_valid)
    critic = value_loss(value_logits, ret, slow[:-1], m.bins, weight[:-1], cfg.slowreg)
    losses = {"policy": policy, "value": critic.sum() / (n_valid * critic.shape[0])}
    ent = ent.detach()
    metrics = {
        "entropy": masked_mean(ent, start_w),
        "return_norm/scale": scale,
        "return_norm/low": m.retnorm.lo.detach().clone(),
        "return_norm/high": m.retnorm.hi.detach().clone(),
        "imag/return_mean": masked_mean(ret, start_w),
        "imag/value_mean": masked_mean(value, start_w),
        "imag/slow_value_mean": masked_mean(slow, start_w),
        "imag/reward_mean": masked_mean(reward[1:], start_w),
        "imag/cont_mean": masked_mean(cont, start_w),
        "imag/weight_mean": masked_mean(weight, start_w),
        "imag/adv_mean": masked_mean(adv, start_w),
        "imag/adv_abs": masked_mean(adv.abs(), start_w),
    }
    return losses, metrics, ret


@torch.no_grad()
def replay_returns(
    data: dict[str, Tensor], boot: Tensor, discount: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Lambda returns over replayed rewards and their loss weights (reference ``repl_loss``).

    ``R_t = r_{t+1} + disc (1 - term_{t+1}) ((1 - lam') boot_{t+1} + lam' R_{t+1})`` with
    ``lam' = lam (1 - last_{t+1})`` and ``boot`` the imagined return from each replayed state.
    ``last[t]`` marks the final step of an episode inside the window (the next step starts a new
    episode or is invalid; the reference reads ``is_last``, which our replay does not store).

    Args:
        data: The prepared batch (``reward``, ``is_terminal``, ``is_first``, ``valid``).
        boot: Imagined lambda return of each replayed state [B, T].
        discount: ``1 - 1/horizon`` (the reference uses it here even with ``contdisc``).
        lam: Lambda of the replay returns.

    Returns:
        ``(ret [B, T-1], weight [B, T-1])`` with weight ``valid & ~last``.
    """
    valid = data["valid"]
    last = torch.zeros_like(valid)
    last[:, :-1] = torch.maximum(data["is_first"][:, 1:], 1.0 - valid[:, 1:])
    cont = 1.0 - data["is_terminal"]
    ret = lambda_return(data["reward"], cont, boot, discount, lam, last=last)
    return ret, (valid * (1.0 - last))[:, :-1]


def replay_value_loss(
    m: DreamerV3Learner, feat: Tensor, data: dict[str, Tensor], boot: Tensor
) -> tuple[Tensor, Tensor]:
    """Critic loss on replayed states towards :func:`replay_returns` (reference ``repl_loss``).

    Args:
        m: The learner.
        feat: Posterior model states [B, T, F] (with gradient when ``repval_grad``).
        data: The prepared batch.
        boot: Imagined lambda return of each start [B, T], detached.

    Returns:
        ``(loss, replay_return_mean)``: the scalar loss (mean over valid steps but the last
        window step) and a metric.
    """
    cfg = m.config
    feat = feat if cfg.repval_grad else feat.detach()
    logits = m.critic(feat[:, :-1])  # [B, T-1, K]
    ret, weight = replay_returns(data, boot, cfg.discount, cfg.repval_lam)
    with torch.no_grad():
        slow = twohot_mean(m.slow_critic(feat[:, :-1].detach()), m.bins)
    loss = value_loss(logits, ret, slow, m.bins, weight, cfg.slowreg)
    return loss.sum() / data["valid"][:, :-1].sum().clamp(min=1.0), masked_mean(ret, weight)
