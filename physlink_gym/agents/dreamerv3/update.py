"""One DreamerV3 update, top to bottom: world model, imagination, behaviour, optimiser step.

This file and :mod:`~physlink_gym.agents.dreamerv3.rssm` hold the whole math of an update, as
the official code keeps it in ``dreamerv3/agent.py`` (``Agent.loss``, ``imag_loss``,
``repl_loss``, ``lambda_return``) and ``dreamerv3/rssm.py`` (danijar/dreamerv3, 2024 and later;
Hafner et al., "Mastering diverse control tasks through world models", Nature 2025).
:func:`train_step` reads in order:

1. **World model** on the replayed window (:func:`world_model_loss`): encoder on
   ``symlog(obs)``, the RSSM posterior scan, then the decoder symlog-MSE, the two-hot reward,
   the continue BCE and the dyn/rep KL with free bits.
2. **Imagination** (:func:`imagine`): the actor rolls the prior forward for ``H`` steps from
   every posterior state; nothing in the rollout carries a gradient (every imagined state is
   ``sg``, ``ac_grads: False``).
3. **Behaviour** (:func:`behaviour_loss`): lambda returns, percentile return normalisation,
   the REINFORCE actor and the two-hot critic with its slow-critic regulariser.
4. **Replay value loss** (:func:`replay_value_loss`) on the posterior states, bootstrapped from
   the imagined returns.
5. **One LaProp step** over every trainable parameter (stop-gradients keep the losses apart),
   skipped on the device when the loss or a gradient is not finite; then the slow critic's EMA.

The update is a function of fixed shapes with no host synchronisation: every random number
arrives in :class:`Noise`, metrics come back as 0-d tensors, and nothing branches on data. It
therefore runs eagerly, compiles (``torch.compile``) and can be captured in a CUDA graph.

Shapes: ``B`` batch, ``T`` window, ``H`` imagination horizon, ``N = B * T`` imagined starts,
``F`` model state, ``K`` two-hot bins; every mask is a float 0/1 tensor.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physlink_gym.agents.dreamerv3 import distributed
from physlink_gym.agents.dreamerv3.compile import maybe_compiled
from physlink_gym.agents.dreamerv3.config import DreamerV3Config
from physlink_gym.agents.dreamerv3.distributions import (
    symlog,
    twohot_mean,
    twohot_mean_from_probs,
    twohot_weights,
)
from physlink_gym.agents.dreamerv3.networks import Actor, MLPHead, fused_heads
from physlink_gym.agents.dreamerv3.normalize import ReturnNormalizer
from physlink_gym.agents.dreamerv3.optim import LaProp
from physlink_gym.agents.dreamerv3.physics import one_step_physics_loss
from physlink_gym.agents.dreamerv3.rssm import RSSM, Posterior
from physlink_gym.errors import ValidationError

__all__ = [
    "BATCH_KEYS",
    "LOSS_KEYS",
    "Noise",
    "behaviour_loss",
    "bernoulli_nll",
    "compute_losses",
    "draw_noise",
    "imagine",
    "imagine_step",
    "kl_dyn_rep",
    "lambda_return",
    "masked_mean",
    "prepare_batch",
    "reinforce_actor_loss",
    "replay_returns",
    "replay_value_loss",
    "symlog_mse",
    "train_step",
    "twohot_nll",
    "value_loss",
    "world_model_loss",
]

LOSS_KEYS = ("dyn", "rep", "dec", "rew", "con", "policy", "value", "repval")
BATCH_KEYS = ("obs", "action", "reward", "is_first", "is_terminal", "valid")
Metrics = dict[str, Tensor]


class Nets(Protocol):
    """What the update reads: the learner's networks, statistics and optimiser."""

    @property
    def config(self) -> DreamerV3Config: ...

    @property
    def compiled(self) -> bool: ...  # run the compiled pieces (compile.py)

    @property
    def encoder(self) -> nn.Module: ...

    @property
    def rssm(self) -> RSSM: ...

    @property
    def decoder(self) -> nn.Module: ...

    @property
    def reward_head(self) -> MLPHead: ...

    @property
    def cont_head(self) -> MLPHead: ...

    @property
    def actor(self) -> Actor: ...

    @property
    def critic(self) -> MLPHead: ...

    @property
    def slow_critic(self) -> MLPHead: ...

    @property
    def retnorm(self) -> ReturnNormalizer: ...

    @property
    def bins(self) -> Tensor: ...

    @property
    def optimizer(self) -> LaProp: ...


class Noise(NamedTuple):
    """Every random number of one update, drawn before it (:func:`draw_noise`)."""

    post: Tensor  # [B, T, L, 1] uniform: posterior latent samples of the replayed window
    latent: Tensor  # [H, N, L, 1] uniform: prior latent samples of the imagined steps
    action: Tensor  # [H, N, A] standard normal (continuous) or [H, N, 1] uniform (discrete)


def draw_noise(m: Nets, batch: int, length: int, device: torch.device | None = None) -> Noise:
    """Draw the noise of one update for ``batch x length`` windows (global torch RNG)."""
    horizon, n = m.config.imag_horizon, batch * length
    return Noise(
        m.rssm.noise(batch, length, device=device),
        m.rssm.noise(horizon, n, device=device),
        m.actor.noise(horizon, n, device=device),
    )


# -- the update ----------------------------------------------------------------------------------


def train_step(m: Nets, data: dict[str, Tensor], noise: Noise, lr: Tensor) -> Metrics:
    """One update of world model, actor and critic; returns 0-d tensor metrics.

    Args:
        m: The learner.
        data: A batch from :func:`prepare_batch`.
        noise: From :func:`draw_noise`.
        lr: The learning rate after warm-up (0-d tensor; the warm-up ramp applies on top).

    Returns:
        ``loss/<name>`` for each of :data:`LOSS_KEYS` and ``loss/total``, ``entropy``,
        ``return_norm/{scale,low,high}``, ``imag/*``, ``model/*``, ``replay/return_mean``,
        ``grad_norm``, ``learning_rate`` (the rate this update applied, warm-up included) and
        ``skipped`` (1 when the loss
        or a gradient was not finite and nothing changed).
    """
    cfg = m.config
    losses, metrics, retnorm = _losses(m, data, noise)
    scales = cfg.loss_scales
    unscaled = set(losses) - set(scales)
    if unscaled:  # a new term must get its scale in the config (reference: asserted keys)
        raise KeyError(f"loss terms without a scale in DreamerV3Config.loss_scales: "
                       f"{sorted(unscaled)}")
    total = sum((scales[k] * v for k, v in losses.items()), torch.zeros((), device=lr.device))
    params = m.optimizer.param_groups[0]["params"]
    grads = torch.autograd.grad(total, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    if distributed.active():  # data-parallel: every rank applies the ranks' mean
        *grads, check, retnorm = distributed.all_average([*grads, total.detach(), retnorm])
    else:
        check = total
    with torch.no_grad():
        norms = torch.stack(torch._foreach_norm(grads))  # per parameter, read once
        finite = torch.isfinite(check) & torch.isfinite(norms).all()
        applied = m.optimizer.applied_lr(lr)
        metrics["grad_norm"] = m.optimizer.apply(grads, lr=lr, finite=finite, norms=norms)
        m.retnorm.commit(retnorm, finite)
        # Slow critic (reference `SlowModel`, rate 0.02 every update): towards the new critic.
        count = m.optimizer.param_groups[0]["step"]
        every = (torch.remainder(count - 1.0, cfg.slow_critic_every) == 0).to(total.dtype)
        rate = cfg.slow_critic_rate * every * finite.to(total.dtype)
        for slow, fast in zip(m.slow_critic.parameters(), m.critic.parameters(), strict=True):
            slow.lerp_(fast, rate)
    metrics.update({f"loss/{k}": v.detach() for k, v in losses.items()})
    metrics["loss/total"] = total.detach()
    metrics["learning_rate"] = applied * finite
    metrics["skipped"] = (~finite).to(total.dtype)
    return metrics


def compute_losses(m: Nets, data: dict[str, Tensor], noise: Noise) -> tuple[Metrics, Metrics]:
    """All unscaled losses (scalars) and metrics of one update; no state of ``m`` changes."""
    losses, metrics, _ = _losses(m, data, noise)
    return losses, metrics


def _losses(m: Nets, data: dict[str, Tensor], noise: Noise) -> tuple[Metrics, Metrics, Tensor]:
    """:func:`compute_losses` and the return normaliser's new statistics (not yet stored)."""
    losses, metrics, post, feat = world_model_loss(m, data, noise.post)
    # Data-parallel: the return percentiles gather every rank's returns, which one compiled
    # graph cannot hold: the behaviour losses then run eagerly.
    behaviour = maybe_compiled(behaviour_loss, m.compiled and not distributed.active())
    with _imagined_autocast(m, feat.device):
        feats, actions = imagine(m, post, noise)
        beh_losses, beh_metrics, ret, retnorm = behaviour(m, feats, actions, data["valid"])
    losses.update(beh_losses)
    metrics.update(beh_metrics)
    if m.config.repval_loss:
        boot = ret[0].reshape(data["valid"].shape)  # imagined return of each start
        losses["repval"], metrics["replay/return_mean"] = replay_value_loss(m, feat, data, boot)
    return losses, metrics, retnorm


def _imagined_autocast(m: Nets, device: torch.device) -> Any:
    """bfloat16 autocast over imagination and the behaviour losses with ``compute_dtype="mixed"``.

    Those are the update's large products (the heads and the GRU over all ``H x N`` imagined
    states), where bfloat16 units (AMX, GPUs) pay for the casts; the world model's small
    sequential products stay float32 (docs/benchmarks/speed.md, section "bfloat16").
    """
    if m.config.compute_dtype == "mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- 1. world model ------------------------------------------------------------------------------


def world_model_loss(
    m: Nets, data: dict[str, Tensor], noise: Tensor
) -> tuple[Metrics, Metrics, Posterior, Tensor]:
    """Decoder, reward, continue and KL losses (reference ``Agent.loss``, ``RSSM.loss``).

    Returns:
        ``(losses, metrics, posterior [B, T, ...], feat [B, T, F])``.
    """
    cfg, valid = m.config, data["valid"]
    embed = m.encoder(data["obs"])
    start = m.rssm.initial(valid.shape[0])
    post, prior = m.rssm.observe(embed, data["action"], data["is_first"] > 0, start, noise)
    feat = torch.cat([post.deter, post.stoch], -1)
    dyn, rep = kl_dyn_rep(post.logits, prior, cfg.free_nats)
    rew_feat = feat if cfg.reward_grad else feat.detach()
    con_target = 1.0 - data["is_terminal"]
    if cfg.contdisc:  # reference: `con *= 1 - 1 / horizon`
        con_target = con_target * cfg.discount
    per_step = {
        "dyn": dyn,
        "rep": rep,
        "dec": symlog_mse(m.decoder(feat), data["obs"]),
        "rew": twohot_nll(m.reward_head(rew_feat), [data["reward"]], [1.0], m.bins),
        "con": bernoulli_nll(m.cont_head(feat).squeeze(-1), con_target),
    }
    losses = {k: masked_mean(v, valid) for k, v in per_step.items()}
    physics_metric = None
    if cfg.physics_weight > 0 and getattr(m, "physics", None) is not None:  # opt-in
        losses["physics"], physics_metric = one_step_physics_loss(m, data, post.deter, prior)
    with torch.no_grad():  # logits are normalised log-probs: no log_softmax needed here
        post_p = post.logits.exp()
        metrics = {
            "model/kl": masked_mean((post_p * (post.logits - prior)).sum((-2, -1)), valid),
            "model/post_entropy": masked_mean(-(post_p * post.logits).sum((-2, -1)), valid),
            "model/prior_entropy": masked_mean(-(prior.exp() * prior).sum((-2, -1)), valid),
            "model/valid_frac": valid.mean(),
        }
        if physics_metric is not None:
            metrics["model/physics_excess"] = physics_metric
    return losses, metrics, post, feat


# -- 2. imagination ------------------------------------------------------------------------------


@torch.no_grad()
def imagine(m: Nets, post: Posterior, noise: Noise) -> tuple[Tensor, Tensor]:
    """Roll the actor and the prior forward from every posterior state, without gradients.

    Returns:
        Time-major ``(feats [H+1, N, F], actions [H, N, A])``; ``feats[0]`` are the starts in
        ``(b, t)`` order.
    """
    deter, stoch = post.deter.flatten(0, 1), post.stoch.flatten(0, 1)  # sg(posterior)
    horizon = m.config.imag_horizon
    step = maybe_compiled(imagine_step, m.compiled)
    # Each state is written once, into its row of the rollout: no stacking afterwards.
    feats = deter.new_empty(horizon + 1, *deter.shape[:-1], deter.shape[-1] + stoch.shape[-1])
    torch.cat([deter, stoch], -1, out=feats[0])
    actions = []
    for t in range(horizon):
        action, deter, stoch = step(m, feats[t], deter, stoch, noise.action[t], noise.latent[t])
        torch.cat([deter, stoch], -1, out=feats[t + 1])
        actions.append(action)
    return feats, torch.stack(actions)


def imagine_step(
    m: Nets, feat: Tensor, deter: Tensor, stoch: Tensor, action_noise: Tensor,
    latent_noise: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """One imagined step from ``feat = (h, z)``: the actor's action and the next ``(h, z)``.

    Reference ``RSSM.imagine`` with the policy of ``imag_loss``.
    """
    action = m.actor.sample(m.actor(feat), noise=action_noise)
    deter, stoch = m.rssm.img_step((deter, stoch), action, latent_noise)
    return action, deter, stoch


# -- 3. behaviour --------------------------------------------------------------------------------


def behaviour_loss(
    m: Nets, feats: Tensor, actions: Tensor, valid: Tensor
) -> tuple[Metrics, Metrics, Tensor, Tensor]:
    """Actor and critic losses on an imagined rollout (reference ``imag_loss``).

    Gradients: the actor learns only through ``log pi(sg(a) | sg(s)) * sg(adv)`` and its
    entropy; the critic from ``sg`` lambda returns and the ``sg`` slow critic's prediction.
    The actor is re-applied to the (``sg``) states with gradient, batched over the horizon.

    Args:
        m: The learner.
        feats: Imagined states [H+1, N, F] (no gradient).
        actions: Imagined actions [H, N, A].
        valid: [B, T] mask of the starts (N = B * T).

    Returns:
        ``({"policy", "value"}, metrics, ret [H, N], retnorm)``: scalar losses (means over valid
        starts and the horizon), metrics, the detached lambda returns, and the return
        normaliser's statistics after this batch (stored by :func:`train_step`).
    """
    cfg = m.config
    start_w = valid.reshape(1, -1)  # [1, N]
    # The heads read the same states: their first layers run as one product per gradient
    # mode (the last state's critic value only bootstraps; the actor's is unused).
    critic_out, actor_out = fused_heads([m.critic, m.actor], feats)  # with gradient
    value_logits = critic_out[:-1]  # [H, N, K]: the critic's loss logits
    with torch.no_grad():
        heads = [m.reward_head, m.cont_head, m.slow_critic]
        reward_out, cont_out, slow_out = fused_heads(heads, feats)
        reward = _decode(m, reward_out[1:])  # [H, N]: entering states 1..H
        cont = torch.sigmoid(cont_out.squeeze(-1))  # [H+1, N]: reference `con.prob(1)`
        value_logp = F.log_softmax(value_logits.detach(), -1)  # shared by value and loss
        value = torch.cat(
            [_decode(m, value_logp, normalized=True), _decode(m, critic_out[-1:].detach())]
        )  # [H+1, N]
        slow = _decode(m, slow_out if cfg.slow_target else slow_out[:-1])
        tarval = slow if cfg.slow_target else value
        # contdisc: the continue head already holds the discount (reference `imag_loss`).
        disc = 1.0 if cfg.contdisc else cfg.discount
        ret = _lambda_return_tm(reward, cont[1:], tarval, disc, cfg.lam)  # [H, N]
        weight = torch.cumprod(disc * cont, 0) / disc * start_w  # [H+1, N]
        # Reference: one percentile over the whole batch, all devices' returns together.
        retnorm = m.retnorm.updated(*distributed.all_gather_cat([ret, start_w]))
        scale = m.retnorm.scale(retnorm)
        adv = (ret - tarval[:-1]) / scale
    logp, ent = m.actor.log_prob_entropy(actor_out[:-1], actions)  # [H, N]
    # reinforce_actor_loss averages over all N*H entries; rescale to a mean over valid starts.
    n_valid = valid.sum().clamp(min=1.0)
    policy = reinforce_actor_loss(logp, ent, adv, weight[:-1], cfg.actent)
    policy = policy * (valid.numel() / n_valid)
    critic = value_loss(
        value_logits, ret, slow[: ret.shape[0]], m.bins, weight[:-1], cfg.slowreg, value_logp
    )
    losses = {"policy": policy, "value": critic.sum() / (n_valid * critic.shape[0])}
    ent = ent.detach()
    metrics = {
        "entropy": masked_mean(ent, start_w),
        "return_norm/scale": scale,
        "return_norm/low": retnorm[0],
        "return_norm/high": retnorm[1],
        "imag/return_mean": masked_mean(ret, start_w),
        "imag/value_mean": masked_mean(value, start_w),
        "imag/slow_value_mean": masked_mean(slow, start_w),
        "imag/reward_mean": masked_mean(reward, start_w),
        "imag/cont_mean": masked_mean(cont, start_w),
        "imag/weight_mean": masked_mean(weight, start_w),
        "imag/adv_mean": masked_mean(adv, start_w),
        "imag/adv_abs": masked_mean(adv.abs(), start_w),
    }
    return losses, metrics, ret, retnorm


def _decode(m: Nets, logits: Tensor, normalized: bool = False) -> Tensor:
    """Two-hot expected value of head logits (or log-probabilities) over the learner's bins.

    Always float32: the decode is a matrix-vector product, which autocast would run in bfloat16.
    """
    with torch.autocast(logits.device.type, enabled=False):
        if normalized:  # exp(log_softmax(l)) == softmax(l) == softmax(log_softmax(l))
            return twohot_mean_from_probs(logits.float().exp(), m.bins, m.config.bins % 2 == 1)
        return twohot_mean(logits.float(), m.bins, symmetric=m.config.bins % 2 == 1)


# -- 4. replay value loss ------------------------------------------------------------------------


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
    m: Nets, feat: Tensor, data: dict[str, Tensor], boot: Tensor
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
    feat = feat[:, :-1]
    logits = m.critic(feat if cfg.repval_grad else feat.detach())  # [B, T-1, K]
    ret, weight = replay_returns(data, boot, cfg.discount, cfg.repval_lam)
    with torch.no_grad():
        slow = _decode(m, m.slow_critic(feat.detach()))
    loss = value_loss(logits, ret, slow, m.bins, weight, cfg.slowreg)
    return loss.sum() / data["valid"][:, :-1].sum().clamp(min=1.0), masked_mean(ret, weight)


# -- the batch -----------------------------------------------------------------------------------


def prepare_batch(
    batch: dict[str, Tensor], obs_dim: int, action_dim: int, device: torch.device,
    reset_window_start: bool = True,
) -> dict[str, Tensor]:
    """Check shapes, move to ``device`` and apply the masks; flags become float 0/1.

    An invalid entry is zeroed and starts afresh, and so does the entry after it; with
    ``reset_window_start`` every window starts from the initial state (the config flag of the
    same name). An entry with a non-finite observation, action or reward counts as invalid, so
    nothing non-finite reaches the networks (the replay already stores such entries as
    invalid; this guards batches from elsewhere).

    Raises:
        ValidationError: for a missing key or a shape that is not ``[B, T, ...]``.
    """
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValidationError(
            got=f"a batch without {missing}",
            expected=f"a dict with {list(BATCH_KEYS)}",
            fix="sample the batch from the DreamerV3 sequence replay",
        )
    obs = batch["obs"]
    if obs.ndim != 3 or obs.shape[-1] != obs_dim or obs.shape[1] < 2:
        _shape_error("obs", obs, f"[B, T, {obs_dim}] with T >= 2")
    bt = tuple(obs.shape[:2])
    shapes = {"action": (*bt, action_dim), "reward": bt, "is_first": bt,
              "is_terminal": bt, "valid": bt}  # fmt: skip
    for key, shape in shapes.items():
        if tuple(batch[key].shape) != shape:
            _shape_error(key, batch[key], str(list(shape)))
    f32 = torch.float32
    obs_t = batch["obs"].to(device, f32)
    action_t = batch["action"].to(device, f32)
    reward_t = batch["reward"].to(device, f32)
    valid = batch["valid"].to(device).bool() & torch.isfinite(reward_t)
    valid &= torch.isfinite(obs_t).all(-1) & torch.isfinite(action_t).all(-1)
    is_first = batch["is_first"].to(device).bool() | ~valid
    is_first[:, 1:] |= ~valid[:, :-1]  # the step after an invalid one starts afresh
    if reset_window_start:
        is_first[:, 0] = True
    keep = valid.unsqueeze(-1)
    return {
        "obs": torch.where(keep, obs_t, 0.0),
        "action": torch.where(keep & ~is_first.unsqueeze(-1), action_t, 0.0),
        "reward": torch.where(valid, reward_t, 0.0),
        "is_first": is_first.to(f32),
        "is_terminal": (batch["is_terminal"].to(device).bool() & valid).to(f32),
        "valid": valid.to(f32),
    }


def _shape_error(key: str, value: Tensor, expected: str) -> None:
    raise ValidationError(
        got=f"batch[{key!r}] of shape {list(value.shape)}",
        expected=f"shape {expected}",
        fix="pass [B, T, ...] tensors from the sequence replay with matching B and T",
    )


# -- loss terms (pure tensor functions) ----------------------------------------------------------


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
    the reference config; the loss scales (dyn 1.0, rep 0.1) are applied by the caller. The
    reference's ``RSSM._dist`` applies the 1% unimix before taking the KL, so pass unimixed
    logits (they are normalised here either way).

    Args:
        post_logits: Tensor[B, T, L, C] posterior (representation) logits.
        prior_logits: Tensor[B, T, L, C] prior (dynamics) logits.
        free_bits: Lower clamp in nats, summed over the L latents.

    Returns:
        ``(dyn, rep)``, each Tensor[B, T].
    """
    _same_shape("post_logits and prior_logits", post_logits, prior_logits)
    lq, lp = F.log_softmax(post_logits, -1), F.log_softmax(prior_logits, -1)
    lq_sg, lp_sg = lq.detach(), lp.detach()
    dyn = (lq_sg.exp() * (lq_sg - lp)).sum((-2, -1))
    rep = (lq.exp() * (lq - lp_sg)).sum((-2, -1))
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

    Example:
        >>> r = torch.zeros(1, 3); c = torch.ones(1, 3); v = torch.tensor([[0.0, 0.0, 2.0]])
        >>> lambda_return(r, c, v, discount=1.0, lam=1.0)
        tensor([[2., 2.]])
    """
    _same_shape("reward, cont and value", reward, cont, value)
    if reward.ndim != 2 or reward.shape[1] < 2:
        raise ValidationError(
            got=f"shape {tuple(reward.shape)}",
            expected="[B, H] with H >= 2",
            fix="pass the imagined trajectory including its start state",
        )
    if last is not None:
        _same_shape("last and reward", last, reward)
        last = last[:, 1:].t()
    return _lambda_return_tm(reward[:, 1:].t(), cont[:, 1:].t(), value.t(), discount, lam, last).t()


def _lambda_return_tm(
    reward: Tensor, cont: Tensor, value: Tensor, discount: float, lam: float,
    last: Tensor | None = None,
) -> Tensor:
    """:func:`lambda_return` on time-major inputs; returns [H-1, N].

    ``reward``, ``cont`` and ``last`` are [H-1, N] and hold the steps ``1 .. H-1`` (the start's
    entries are never read); ``value`` is [H, N].
    """
    live = discount * cont
    mix = torch.full_like(live, lam)
    if last is not None:
        mix = mix * (1.0 - last.to(mix.dtype))
    # R_t = a_t + b_t * R_{t+1}; a and b are computed for all t at once.
    a = reward + live * (1.0 - mix) * value[1:]
    b = live * mix
    out = torch.empty_like(a)
    nxt = value[-1]
    for t in range(a.shape[0] - 1, -1, -1):
        nxt = torch.addcmul(a[t], b[t], nxt)
        out[t] = nxt
    return out


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
    log_probs: Tensor | None = None,
) -> Tensor:
    """Critic loss ``sg(w) * (twohot_ce(sg(R)) + slow_reg * twohot_ce(sg(v_slow)))``.

    Reference ``imag_loss`` / ``repl_loss``: the critic is trained towards the lambda return and
    regularised towards the slow critic's prediction (``slowreg: 1.0``). Both cross-entropies
    come from one ``log_softmax`` of the logits (:func:`twohot_nll`).

    Args:
        logits: Tensor[B, H, K] critic logits (or padded wider, see ``twohot_loss``).
        target: Tensor[B, H] lambda-return targets.
        slow_target: Tensor[B, H] slow critic's decoded prediction.
        bins: Tensor[K] two-hot bins.
        weight: Tensor[B, H] trajectory weight.
        slow_reg: Weight of the slow-critic regulariser.
        log_probs: ``log_softmax(logits)`` if already computed (no gradient needed).

    Returns:
        Tensor[B, H].
    """
    _same_shape("target, slow_target and weight", target, slow_target, weight)
    targets, scales = [target], [1.0]
    if slow_reg:
        targets, scales = [target, slow_target], [1.0, slow_reg]
    return twohot_nll(logits, targets, scales, bins, log_probs) * weight.detach()


def twohot_nll(
    logits: Tensor, targets: list[Tensor], scales: list[float], bins: Tensor,
    log_probs: Tensor | None = None,
) -> Tensor:
    """``sum_j scale_j * twohot_loss(logits, sg(target_j))`` with one softmax and a lean backward.

    The forward gathers two log-probabilities per target; the backward is
    ``sum_j scale_j * (softmax(logits) - twohot(target_j))`` written straight into one tensor
    (autograd through ``gather`` would allocate a zero tensor of the logits' size per gather).

    Args:
        logits: Tensor[..., K] (or padded wider).
        targets: Tensors[...] in raw space; no gradient flows into them.
        scales: One weight per target.
        bins: Tensor[K] two-hot bins.
        log_probs: ``log_softmax(logits)`` if already computed.

    Returns:
        Tensor[...] of losses.
    """
    if log_probs is None:
        log_probs = F.log_softmax(logits.detach(), -1)
    index, weight = [], []
    for target, scale in zip(targets, scales, strict=True):
        if logits.shape[:-1] != target.shape or logits.shape[-1] < bins.shape[0]:
            raise ValidationError(
                got=f"logits {tuple(logits.shape)} and target {tuple(target.shape)}",
                expected=f"logits of shape target.shape + (K >= {bins.shape[0]},)",
                fix="pass one scalar target per logits vector",
            )
        below, above, w_below, w_above = twohot_weights(target, bins)
        index += [below, above]
        weight += [w_below * scale, w_above * scale]
    loss: Tensor = _TwoHotNLL.apply(  # type: ignore[no-untyped-call]
        logits, log_probs.detach(), torch.stack(index, -1),
        torch.stack(weight, -1).to(log_probs.dtype),
    )
    return loss


class _TwoHotNLL(torch.autograd.Function):
    """``-sum_j w_j log_softmax(logits)[index_j]`` with gradient ``sum(w) p - scatter(w)``."""

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, log_probs: Tensor, index: Tensor, weight: Tensor
    ) -> Tensor:
        ctx.save_for_backward(log_probs, index, weight)
        return -(log_probs.gather(-1, index) * weight).sum(-1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        log_probs, index, weight = ctx.saved_tensors
        out = torch.exp(log_probs) * (grad * weight.sum(-1)).unsqueeze(-1)
        out.scatter_add_(-1, index, -(grad.unsqueeze(-1) * weight))
        return out, None, None, None
