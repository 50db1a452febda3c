"""The DreamerV3 learner: its networks, one LaProp optimiser, acting, and the update call.

The math of an update lives in :mod:`~physlink_gym.agents.dreamerv3.update` (and the RSSM's
scans in :mod:`~physlink_gym.agents.dreamerv3.rssm`); this module owns the parameters, draws
each update's noise, runs the update eagerly or compiled, and acts.

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
import ctypes
import logging
import os
import platform

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from physlink_gym.agents.dreamerv3 import update
from physlink_gym.agents.dreamerv3.config import DreamerV3Config
from physlink_gym.agents.dreamerv3.distributions import twohot_bins
from physlink_gym.agents.dreamerv3.networks import Actor, Decoder, Encoder, MLPHead, TwoHotHead
from physlink_gym.agents.dreamerv3.normalize import ReturnNormalizer
from physlink_gym.agents.dreamerv3.optim import LaProp
from physlink_gym.agents.dreamerv3.physics import PhysicsTerms
from physlink_gym.agents.dreamerv3.rssm import RSSM

__all__ = ["LOSS_KEYS", "DreamerV3Learner", "tune_allocator"]

State = tuple[Tensor, Tensor, Tensor]
LOSS_KEYS = update.LOSS_KEYS


class DreamerV3Learner(nn.Module):
    """World model, actor, critic, slow critic, return normaliser and their LaProp optimiser.

    Args:
        config: Hyperparameters.
        obs_dim: Width of the (flat, float) observation.
        action_dim: Continuous action dimensions, or the number of discrete actions.
        discrete: Whether actions are one-hot (per group) of discrete choices.
        device: Where the parameters live.
        groups: The choices of each discrete action group (MultiDiscrete, MultiBinary);
            ``None`` with ``discrete``: one group of ``action_dim`` (Discrete).
    """

    bins: Tensor

    def __init__(
        self,
        config: DreamerV3Config,
        obs_dim: int,
        action_dim: int,
        discrete: bool,
        device: torch.device | str = "cpu",
        groups: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        cfg = self.config = config
        self.obs_dim, self.action_dim, self.discrete = obs_dim, action_dim, discrete
        feat, units, bins, eps = cfg.feat_dim, cfg.units, cfg.bins, cfg.norm_eps
        self.encoder = Encoder(obs_dim, cfg)
        self.rssm = RSSM(cfg, self.encoder.out_features, action_dim)
        self.decoder = Decoder(obs_dim, cfg)
        self.reward_head = TwoHotHead(feat, units, cfg.rew_layers, bins, cfg.rew_outscale, eps)
        self.cont_head = MLPHead(feat, units, cfg.con_layers, 1, cfg.con_outscale, eps)
        self.actor = Actor(cfg, action_dim, discrete, groups)
        self.critic = TwoHotHead(feat, units, cfg.critic_layers, bins, cfg.critic_outscale, eps)
        # Reference `SlowModel`: starts as a copy of the critic, then EMA (rate 0.02).
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.retnorm = ReturnNormalizer(
            cfg.retnorm_rate, cfg.retnorm_low, cfg.retnorm_high, cfg.retnorm_limit
        )
        self.register_buffer("bins", twohot_bins(bins), persistent=False)
        # Soft invariants trained against when config.physics_weight > 0 (physics.py); bound
        # to the env by DreamerV3 at learn()/fit(), not part of the state dict.
        self.physics: PhysicsTerms | None = None
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
        self.optimizer.init_state()
        if self.device.type == "cpu":
            tune_allocator()
        self.compiled = cfg.compile is True  # "auto": decided per run, set_compiled

    def set_compiled(self, on: bool) -> None:
        """Run the update's compiled pieces (:mod:`.compile`) from now on, or eagerly."""
        self.compiled = self.rssm.compiled = bool(on)

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
            # Deterministic acting draws no random numbers (its latent sample is replaced by
            # the mode below), so evaluation never shifts the global RNG that training uses.
            noise = None
            if deterministic:
                noise = torch.full((obs.shape[0], self.rssm.latents, 1), 0.5, device=self.device)
            h, z, logp = self.rssm.obs_step((h, z), prev_action, embed, is_first.bool(), noise)
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
    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One world-model + actor + critic update (:func:`update.train_step`).

        Args:
            batch: ``obs`` [B, T, D] float, ``action`` [B, T, A] (the action that led into
                ``obs[t]``), ``reward`` [B, T], ``is_first``, ``is_terminal``, ``valid`` [B, T]
                bool.

        Returns:
            0-d tensor metrics (see :func:`update.train_step`); nothing waits for the device.
        """
        data = self.prepare_batch(batch)
        b, t = data["valid"].shape
        noise = update.draw_noise(self, b, t, self.device)
        lr = torch.tensor(float(self.optimizer.param_groups[0]["lr"]), device=self.device)
        with self._autocast():
            return update.train_step(self, data, noise, lr)

    def compute_losses(
        self, data: dict[str, Tensor], noise: update.Noise | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """All unscaled losses and metrics of a prepared batch, without updating anything.

        For tests and diagnostics (the return normaliser's statistics do move); noise is drawn
        from the global RNG when not given.
        """
        b, t = data["valid"].shape
        if noise is None:
            noise = update.draw_noise(self, b, t, self.device)
        with self._autocast():
            return update.compute_losses(self, data, noise)

    def prepare_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Check a replay batch, move it to the device and apply the masks (float flags)."""
        return update.prepare_batch(
            batch, self.obs_dim, self.action_dim, self.device, self.config.reset_window_start
        )


_ALLOCATOR_TUNED: list[bool] = []


def tune_allocator() -> bool:
    """Keep glibc from returning large freed blocks to the OS between updates (once).

    An update allocates and frees tensors of several MB; glibc serves those with ``mmap`` and
    unmaps them on free, so the next update page-faults on every page again (about 30,000
    faults and 25% of the update's time for the ``debug`` preset on a 2-core CPU). This raises
    glibc's mmap threshold to its maximum (32 MiB), its trim threshold to 1 GiB and its top
    pad to 64 MiB, process-wide, with ``mallopt``; the cost is memory that stays reserved
    after training. Set ``PHYSLINK_GYM_TUNE_MALLOC=0`` to leave the allocator alone (or use
    jemalloc/tcmalloc through ``LD_PRELOAD``). A no-op off glibc.

    Returns:
        Whether the settings were applied by this call.
    """
    if _ALLOCATOR_TUNED or os.environ.get("PHYSLINK_GYM_TUNE_MALLOC", "1") == "0":
        return False
    _ALLOCATOR_TUNED.append(True)
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        ok = all((libc.mallopt(m_mmap_threshold, 32 << 20), libc.mallopt(m_trim_threshold, 1 << 30),
                  libc.mallopt(m_top_pad, 64 << 20)))
    except (OSError, AttributeError):
        return False
    logging.getLogger(__name__).debug("glibc malloc thresholds raised for DreamerV3 updates")
    return bool(ok)
