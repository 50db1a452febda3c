"""The DreamerV3 learner: all networks, one LaProp optimiser, and the update step.

One update (:meth:`DreamerV3Learner.train_step`), top to bottom, as in ``Agent.train`` /
``Agent.loss`` of the official code (danijar/dreamerv3, 2024 and later):

1. World model on the replayed window: encoder on ``symlog(obs)``, RSSM posterior scan, then
   decoder symlog-MSE, two-hot reward, continue BCE and the dyn/rep KL with free bits.
2. Imagination from every valid posterior state (``sg`` start), horizon 15, with the actor;
   lambda returns, percentile return normalisation, REINFORCE actor, two-hot critic with the
   slow-critic regulariser (:mod:`~physlink_gym.agents.dreamerv3.behavior`).
3. Replay value loss on the posterior states, bootstrapped from the imagined returns.
4. One LaProp step over every trainable parameter (stop-gradients keep the losses apart), then
   the slow critic's EMA update.

Example:
    >>> import torch
    >>> from physlink_gym.agents.dreamerv3.config import make_config
    >>> learner = DreamerV3Learner(make_config("debug"), obs_dim=3, action_dim=1, discrete=False)
    >>> B, T = 2, 8
    >>> batch = {"obs": torch.randn(B, T, 3), "action": torch.rand(B, T, 1) * 2 - 1,
    ...          "reward": torch.randn(B, T), "is_first": torch.zeros(B, T, dtype=torch.bool),
    ...          "is_terminal": torch.zeros(B, T, dtype=torch.bool),
    ...          "valid": torch.ones(B, T, dtype=torch.bool)}
    >>> metrics = learner.train_step(batch)
    >>> sorted(k for k in metrics if k.startswith("loss/"))[:3]
    ['loss/con', 'loss/dec', 'loss/dyn']
    >>> action, state = learner.policy_step(torch.randn(4, 3), learner.initial_state(4),
    ...                                     torch.ones(4, dtype=torch.bool))
    >>> action.shape, [tuple(s.shape) for s in state]
    (torch.Size([4, 1]), [(4, 32), (4, 16), (4, 1)])
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from physlink_gym.agents.dreamerv3.behavior import (
    imagination_losses,
    masked_mean,
    replay_value_loss,
)
from physlink_gym.agents.dreamerv3.config import DreamerV3Config
from physlink_gym.agents.dreamerv3.distributions import twohot_bins, twohot_loss
from physlink_gym.agents.dreamerv3.losses import bernoulli_nll, kl_dyn_rep, symlog_mse
from physlink_gym.agents.dreamerv3.networks import Actor, Decoder, Encoder, MLPHead
from physlink_gym.agents.dreamerv3.normalize import ReturnNormalizer, ema_update
from physlink_gym.agents.dreamerv3.optim import LaProp
from physlink_gym.agents.dreamerv3.rssm import RSSM, Posterior
from physlink_gym.errors import ValidationError

__all__ = ["LOSS_KEYS", "DreamerV3Learner"]

State = tuple[Tensor, Tensor, Tensor]
LOSS_KEYS = ("dyn", "rep", "dec", "rew", "con", "policy", "value", "repval")
_BATCH_KEYS = ("obs", "action", "reward", "is_first", "is_terminal", "valid")


class DreamerV3Learner(nn.Module):
    """World model, actor, critic, slow critic, return normaliser and their LaProp optimiser.

    Args:
        config: Hyperparameters.
        obs_dim: Width of the (flat, float) observation.
        action_dim: Continuous action dimensions, or the number of discrete actions.
        discrete: Whether actions are one-hot of a Discrete space.
        device: Where the parameters live.
    """

    bins: Tensor

    def __init__(
        self,
        config: DreamerV3Config,
        obs_dim: int,
        action_dim: int,
        discrete: bool,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        cfg = self.config = config
        self.obs_dim, self.action_dim, self.discrete = obs_dim, action_dim, discrete
        feat, units, bins, eps = cfg.feat_dim, cfg.units, cfg.bins, cfg.norm_eps
        self.encoder = Encoder(obs_dim, cfg)
        self.rssm = RSSM(cfg, self.encoder.out_features, action_dim)
        self.decoder = Decoder(obs_dim, cfg)
        self.reward_head = MLPHead(feat, units, cfg.rew_layers, bins, cfg.rew_outscale, eps)
        self.cont_head = MLPHead(feat, units, cfg.con_layers, 1, cfg.con_outscale, eps)
        self.actor = Actor(cfg, action_dim, discrete)
        self.critic = MLPHead(feat, units, cfg.critic_layers, bins, cfg.critic_outscale, eps)
        # Reference `SlowModel`: starts as a copy of the critic, then EMA (rate 0.02).
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.retnorm = ReturnNormalizer(
            cfg.retnorm_rate, cfg.retnorm_low, cfg.retnorm_high, cfg.retnorm_limit
        )
        self.register_buffer("bins", twohot_bins(bins), persistent=False)
        self.to(device)
        self.optimizer = LaProp(
            self.trainable_parameters(),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            agc=cfg.agc,
            agc_pmin=cfg.agc_pmin,
            warmup=cfg.warmup,
        )

    @property
    def device(self) -> torch.device:
        """Where the parameters live now (follows ``.to()`` calls made after construction)."""
        return self.bins.device

    # -- parameter groups --------------------------------------------------------------------
    def world_model_modules(self) -> list[nn.Module]:
        """Encoder, RSSM, decoder, reward and continue heads."""
        return [self.encoder, self.rssm, self.decoder, self.reward_head, self.cont_head]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter the optimiser updates (all but the slow critic's)."""
        mods = [*self.world_model_modules(), self.actor, self.critic]
        return [p for mod in mods for p in mod.parameters()]

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.config.compute_dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- acting --------------------------------------------------------------------------------
    def initial_state(self, batch_size: int) -> State:
        """All-zero recurrent state ``(h [B, deter], z [B, stoch*classes], prev_action [B, A])``."""
        h, z = self.rssm.initial(batch_size)
        return h, z, h.new_zeros(batch_size, self.action_dim)

    @torch.no_grad()
    def policy_step(
        self, obs: Tensor, state: State, is_first: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, State]:
        """Observe one step and act (reference ``Agent.policy``).

        Args:
            obs: Raw observations [B, obs_dim].
            state: ``(h, z, prev_action)`` from :meth:`initial_state` or the previous call.
            is_first: [B] bool; those rows start from the initial state.
            deterministic: Take the mode instead of sampling.

        Returns:
            ``(action [B, A], new_state)``: continuous actions clipped to [-1, 1], discrete
            actions one-hot; ``new_state``'s previous action is this action.
        """
        h, z, prev_action = state
        with self._autocast():
            embed = self.encoder(obs.to(self.device, torch.float32))
            h, z, logp = self.rssm.obs_step((h, z), prev_action, embed, is_first.bool())
            if deterministic:
                # Deviation for SB3's contract (deterministic=True is repeatable): the reference
                # samples the posterior latent even in eval mode; here its mode is taken instead.
                z = F.one_hot(logp.argmax(-1), logp.shape[-1]).to(z.dtype).flatten(-2)
            action = self.actor.sample(self.actor(torch.cat([h, z], -1)), deterministic)
        action = action.float()
        if not self.discrete:
            action = action.clamp(-1.0, 1.0)
        return action, (h.float(), z.float(), action)

    # -- learning ------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One world-model + actor + critic update; returns float metrics (one host sync).

        Args:
            batch: ``obs`` [B, T, D] float, ``action`` [B, T, A] (the action that led into
                ``obs[t]``), ``reward`` [B, T], ``is_first``, ``is_terminal``, ``valid`` [B, T]
                bool.

        Returns:
            Metrics: ``loss/<name>`` for each of :data:`LOSS_KEYS` and ``loss/total``,
            ``entropy``, ``return_norm/{scale,low,high}``, ``imag/*``, ``model/*``,
            ``grad_norm`` and ``lr``.
        """
        data = self._prepare(batch)
        with self._autocast():
            losses, metrics = self.compute_losses(data)
        cfg = self.config
        scales = {
            "dyn": cfg.scale_dyn, "rep": cfg.scale_rep, "dec": cfg.scale_dec,
            "rew": cfg.scale_rew, "con": cfg.scale_con, "policy": cfg.scale_policy,
            "value": cfg.scale_value, "repval": cfg.scale_repval,
        }  # fmt: skip
        total = sum((scales[k] * v for k, v in losses.items()), torch.zeros((), device=self.device))
        lr = self.optimizer.current_lr()
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(total)
        self.optimizer.step()
        count = int(self.optimizer.param_groups[0]["step"]) - 1  # updates before this one
        if count % cfg.slow_critic_every == 0:
            ema_update(self.slow_critic, self.critic, cfg.slow_critic_rate)
        metrics.update({f"loss/{k}": v.detach() for k, v in losses.items()})
        metrics["loss/total"] = total.detach()
        if self.optimizer.last_grad_norm is not None:
            metrics["grad_norm"] = self.optimizer.last_grad_norm
        names = list(metrics)
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in names]).tolist()
        out = dict(zip(names, values, strict=True))
        out["lr"] = lr
        return out

    def compute_losses(
        self, data: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """All unscaled losses (scalars) and metrics for a batch from :meth:`prepare_batch`.

        Exposed for tests and diagnostics; :meth:`train_step` is the normal entry point.
        """
        losses, metrics, post, feat = self._world_model_losses(data)
        beh_losses, beh_metrics, ret = imagination_losses(self, post, data["valid"])
        losses.update(beh_losses)
        metrics.update(beh_metrics)
        if self.config.repval_loss:
            boot = ret[0].reshape(data["valid"].shape)  # imagined return of each start
            losses["repval"], metrics["replay/return_mean"] = replay_value_loss(
                self, feat, data, boot
            )
        return losses, metrics

    def _world_model_losses(
        self, data: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], Posterior, Tensor]:
        """Decoder, reward, continue and KL losses (reference ``Agent.loss``, ``RSSM.loss``)."""
        cfg, valid = self.config, data["valid"]
        embed = self.encoder(data["obs"])
        start = self.rssm.initial(valid.shape[0])
        post, prior = self.rssm.observe(embed, data["action"], data["is_first"] > 0, start)
        feat = torch.cat([post.deter, post.stoch], -1)  # [B, T, F]
        dyn, rep = kl_dyn_rep(post.logits, prior, cfg.free_nats)
        rew_feat = feat if cfg.reward_grad else feat.detach()
        con_target = 1.0 - data["is_terminal"]
        if cfg.contdisc:  # reference: `con *= 1 - 1 / horizon`
            con_target = con_target * cfg.discount
        per_step = {
            "dyn": dyn,
            "rep": rep,
            "dec": symlog_mse(self.decoder(feat), data["obs"]),
            "rew": twohot_loss(self.reward_head(rew_feat), data["reward"], self.bins),
            "con": bernoulli_nll(self.cont_head(feat).squeeze(-1), con_target),
        }
        losses = {k: masked_mean(v, valid) for k, v in per_step.items()}
        with torch.no_grad():  # logits are normalised log-probs: no log_softmax needed here
            post_p = post.logits.exp()
            metrics = {
                "model/kl": masked_mean((post_p * (post.logits - prior)).sum((-2, -1)), valid),
                "model/post_entropy": masked_mean(-(post_p * post.logits).sum((-2, -1)), valid),
                "model/prior_entropy": masked_mean(-(prior.exp() * prior).sum((-2, -1)), valid),
                "model/valid_frac": valid.mean(),
            }
        return losses, metrics, post, feat

    def prepare_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Public alias of the batch checks and conversion used by :meth:`train_step`."""
        return self._prepare(batch)

    def _prepare(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Check shapes, move to the device, apply the masks; flags become float 0/1."""
        missing = [k for k in _BATCH_KEYS if k not in batch]
        if missing:
            raise ValidationError(
                got=f"a batch without {missing}",
                expected=f"a dict with {list(_BATCH_KEYS)}",
                fix="sample the batch from the DreamerV3 sequence replay",
            )
        obs = batch["obs"]
        if obs.ndim != 3 or obs.shape[-1] != self.obs_dim or obs.shape[1] < 2:
            _shape_error("obs", obs, f"[B, T, {self.obs_dim}] with T >= 2")
        bt = tuple(obs.shape[:2])
        shapes = {"action": (*bt, self.action_dim), "reward": bt, "is_first": bt,
                  "is_terminal": bt, "valid": bt}  # fmt: skip
        for key, shape in shapes.items():
            if tuple(batch[key].shape) != shape:
                _shape_error(key, batch[key], str(list(shape)))
        dev, f32 = self.device, torch.float32
        valid = batch["valid"].to(dev).bool()
        is_first = batch["is_first"].to(dev).bool() | ~valid
        is_first[:, 1:] |= ~valid[:, :-1]  # the step after an invalid one starts afresh
        if self.config.reset_window_start:  # deviation: no stored replay context
            is_first[:, 0] = True
        keep = valid.unsqueeze(-1)
        return {
            "obs": torch.where(keep, batch["obs"].to(dev, f32), 0.0),
            "action": torch.where(
                keep & ~is_first.unsqueeze(-1), batch["action"].to(dev, f32), 0.0
            ),
            "reward": torch.where(valid, batch["reward"].to(dev, f32), 0.0),
            "is_first": is_first.to(f32),
            "is_terminal": (batch["is_terminal"].to(dev).bool() & valid).to(f32),
            "valid": valid.to(f32),
        }


def _shape_error(key: str, value: Tensor, expected: str) -> None:
    raise ValidationError(
        got=f"batch[{key!r}] of shape {list(value.shape)}",
        expected=f"shape {expected}",
        fix="pass [B, T, ...] tensors from the sequence replay with matching B and T",
    )
