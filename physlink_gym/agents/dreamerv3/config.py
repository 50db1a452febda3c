"""DreamerV3 hyperparameters: one frozen dataclass and named size presets.

Every default follows the official code (``danijar/dreamerv3``, ``dreamerv3/configs.yaml`` at
commit cd026ac, 2025-02, identical to f8817c4 of 2024-12 for every field used here) and the
paper (Hafner et al., "Mastering diverse control tasks through world models", Nature 2025).
A comment next to each field names the reference key it mirrors. Fields in the section
"Deviations" have no counterpart in the reference, or change its behaviour; each says why.

Example:
    >>> cfg = make_config("12m", batch_size=8)
    >>> (cfg.deter, cfg.hidden, cfg.classes, cfg.units, cfg.batch_size)
    (2048, 256, 16, 256, 8)
    >>> round(cfg.discount, 6)
    0.996997
    >>> DreamerV3Config.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from physlink_gym.errors import ConfigurationError

__all__ = ["ARG_FIELDS", "PRESETS", "DreamerV3Config", "make_config", "overrides_from_args"]


@dataclass(frozen=True)
class DreamerV3Config:
    """All hyperparameters of the DreamerV3 learner (defaults: the ``1m`` preset).

    ``configs.yaml`` keys are written ``agent.<path>`` (``defaults`` section) unless another
    section is named. Sizes default to ``size1m`` (the reference's ``dmc_proprio`` preset).
    """

    # --- Sizes (configs.yaml `size1m`: `.*\.rssm: {deter: 512, hidden: 64, classes: 4}`,
    # `.*\.units: 64`; the other presets are in PRESETS below) -----------------------------------
    deter: int = 512  # dyn.rssm.deter: GRU state size h
    hidden: int = 64  # dyn.rssm.hidden: width of the RSSM's input/prior/posterior layers
    stoch: int = 32  # dyn.rssm.stoch: number of categorical latents
    classes: int = 4  # dyn.rssm.classes: classes per latent
    blocks: int = 8  # dyn.rssm.blocks: block-diagonal groups of the GRU
    units: int = 64  # enc/dec/rewhead/conhead/policy/value `units`
    enc_layers: int = 3  # enc.simple.layers
    dec_layers: int = 3  # dec.simple.layers
    rew_layers: int = 1  # rewhead.layers
    con_layers: int = 1  # conhead.layers
    actor_layers: int = 3  # policy.layers
    critic_layers: int = 3  # value.layers
    img_layers: int = 2  # dyn.rssm.imglayers: prior MLP depth
    obs_layers: int = 1  # dyn.rssm.obslayers: posterior MLP depth
    dyn_layers: int = 1  # dyn.rssm.dynlayers: block-linear layers before the GRU gates
    norm_eps: float = 1e-4  # embodied/jax/nets.py `Norm.eps` (RMSNorm epsilon)

    # --- Distributions and output layers -------------------------------------------------------
    unimix: float = 0.01  # dyn.rssm.unimix: 1% uniform mixed into the latent categoricals
    free_nats: float = 1.0  # dyn.rssm.free_nats: free bits of the dyn and rep KL terms
    bins: int = 255  # rewhead.bins / value.bins: two-hot bins, symexp-spaced over [-20, 20]
    actor_minstd: float = 0.1  # policy.minstd of the bounded normal
    actor_maxstd: float = 1.0  # policy.maxstd of the bounded normal
    actor_outscale: float = 0.01  # policy.outscale: init scale of the policy output layer
    rew_outscale: float = 0.0  # rewhead.outscale: zero-initialised reward output
    critic_outscale: float = 0.0  # value.outscale: zero-initialised value output
    con_outscale: float = 1.0  # conhead.outscale
    dec_outscale: float = 1.0  # dec.simple.outscale
    rssm_outscale: float = 1.0  # dyn.rssm.outscale: latent logit layers

    # --- Loss scales (loss_scales: {rec, rew, con, dyn, rep, policy, value, repval}) -----------
    scale_dyn: float = 1.0  # loss_scales.dyn
    scale_rep: float = 0.1  # loss_scales.rep
    scale_dec: float = 1.0  # loss_scales.rec
    scale_rew: float = 1.0  # loss_scales.rew
    scale_con: float = 1.0  # loss_scales.con
    scale_policy: float = 1.0  # loss_scales.policy
    scale_value: float = 1.0  # loss_scales.value
    scale_repval: float = 0.3  # loss_scales.repval

    # --- Behaviour learning ----------------------------------------------------------------------
    imag_horizon: int = 15  # imag_length
    horizon: int = 333  # horizon: discount = 1 - 1/horizon
    contdisc: bool = True  # contdisc: continue target (1 - terminal) * discount; imagination
    # then discounts through the continue head only (disc = 1 in `imag_loss`)
    lam: float = 0.95  # imag_loss.lam
    repval_lam: float = 0.95  # repl_loss.lam
    actent: float = 3e-4  # imag_loss.actent: entropy bonus of the REINFORCE actor
    slowreg: float = 1.0  # imag_loss.slowreg / repl_loss.slowreg: slow-critic regulariser
    slow_target: bool = False  # imag_loss.slowtar / repl_loss.slowtar: bootstrap from the
    # online critic (False) or from the slow critic (True)
    slow_critic_rate: float = 0.02  # slowvalue.rate: EMA rate of the slow critic
    slow_critic_every: int = 1  # slowvalue.every
    retnorm_rate: float = 0.01  # retnorm.rate
    retnorm_low: float = 5.0  # retnorm.perclo
    retnorm_high: float = 95.0  # retnorm.perchi
    retnorm_limit: float = 1.0  # retnorm.limit: advantages divided by max(1, P95 - P5)
    ac_grads: bool = False  # ac_grads: no gradient from imagination into the start states
    reward_grad: bool = True  # reward_grad: reward loss trains the world model features
    repval_loss: bool = True  # repval_loss: value loss on replayed (posterior) states
    repval_grad: bool = True  # repval_grad: that loss also trains the world model features

    # --- Optimiser (opt: {lr, agc, eps, beta1, beta2, warmup}; LaProp = scale_by_rms then
    # momentum, agent.py `_make_opt`) -----------------------------------------------------------
    lr: float = 4e-5  # opt.lr
    eps: float = 1e-20  # opt.eps
    beta1: float = 0.9  # opt.beta1
    beta2: float = 0.999  # opt.beta2
    agc: float = 0.3  # opt.agc: adaptive gradient clipping threshold
    agc_pmin: float = 1e-3  # embodied/jax/opt.py `clip_by_agc(pmin=1e-3)`
    warmup: int = 1000  # opt.warmup: linear learning-rate warm-up in updates

    # --- Data ----------------------------------------------------------------------------------
    batch_size: int = 16  # batch_size
    batch_length: int = 64  # batch_length
    train_ratio: float = 1024.0  # configs.yaml `dmc_proprio: run.train_ratio: 1024` (replayed
    # steps per env step; 1024 = one 16 x 64 update per env step)

    # --- Deviations from the reference (named flags) ----------------------------------------------
    reset_window_start: bool = True  # the reference stores the RSSM carry in replay and
    # starts each window from it (replay_context: 1); we start every window from the initial
    # state (is_first[:, 0] = True), which needs no stored latents and keeps replay model-free
    actor_unimix: float = 0.01  # the reference config lists policy.unimix 0.01, but its
    # `categorical` discrete head ignores it (effective 0); the 2023 code's `onehot` actor head
    # applied it: we keep 1% for Discrete actions (0.0 gives the current reference)
    compute_dtype: str = "float32"  # jax.compute_dtype: bfloat16; we compute in float32:
    # "bfloat16" (the forward under autocast) is much slower on CPUs without AMX/AVX512-BF16,
    # and even with AMX slower at small/1m (the casts around small products cost more than the
    # bf16 units save), faster only from 12m; learning on Pendulum was the same. "mixed":
    # bfloat16 autocast only over imagination and the behaviour losses (the large products
    # over all imagined states), float32 for the world model and for acting: with AMX about
    # even at small, faster from 1m. Figures: docs/benchmarks/speed.md, section "bfloat16".
    # Head outputs are float32 in every mode (reference `outs.py`: f32(logits))
    compile: bool | str = "auto"  # torch.compile the scan steps, one imagination step and
    # the behaviour losses (no reference counterpart; the reference jit-compiles everything).
    # Each update is faster compiled, after a first update that waits for the compiler
    # (figures: docs/benchmarks/speed.md).
    # "auto": compiled when a learn() or fit() call plans at least
    # compile.AUTO_COMPILE_UPDATES updates on a CPU with a C++ compiler, so that short and
    # first runs never wait; True/False force it. Falls back to eager, with a warning, where
    # compiling fails. See docs/benchmarks/speed.md.
    mlp_keys: str = ".*"  # enc/dec `mlp_keys` (2023 reference code): the Dict observation
    # keys the encoder reads and the decoder reconstructs, a regular expression matched at the
    # start of each key (re.match, as the reference); keys it does not match are ignored
    physics_weight: float = 0.0  # no reference counterpart (opt-in): weight of the soft,
    # differentiable invariants' residual excess on the model's one-step predictions in the
    # world-model loss (physics.py; measured in docs/imagination.md)
    preset: str = field(default="1m")  # the size preset these figures came from (bookkeeping)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def discount(self) -> float:
        """``1 - 1/horizon`` (reference ``agent.py``: ``disc = 1 - 1 / self.config.horizon``)."""
        return 1.0 - 1.0 / self.horizon

    @property
    def loss_scales(self) -> dict[str, float]:
        """The weight of each loss term in the update's total (reference ``loss_scales``).

        Every term an update computes must have one here: :func:`~physlink_gym.agents.
        dreamerv3.update.train_step` refuses a term without a scale (as the reference asserts
        that its losses and scales have the same keys). ``physics`` is the opt-in
        ``physics_weight``.
        """
        return {"dyn": self.scale_dyn, "rep": self.scale_rep, "dec": self.scale_dec,
                "rew": self.scale_rew, "con": self.scale_con, "policy": self.scale_policy,
                "value": self.scale_value, "repval": self.scale_repval,
                "physics": self.physics_weight}

    @property
    def stoch_dim(self) -> int:
        """Size of the flattened one-hot latent ``z`` (``stoch * classes``)."""
        return self.stoch * self.classes

    @property
    def feat_dim(self) -> int:
        """Size of the model state ``concat(h, z)`` that every head reads."""
        return self.deter + self.stoch * self.classes

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field (``dataclasses.asdict``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DreamerV3Config:
        """Rebuild a config from :meth:`to_dict` output (e.g. checkpoint metadata).

        Args:
            data: Field names to values.

        Returns:
            The config.

        Raises:
            ConfigurationError: for an unknown key.
        """
        _check_keys(data)
        return cls(**data)


_SIZES: dict[str, dict[str, Any]] = {
    # Tiny model for tests, after configs.yaml's `debug` preset (sizes shrunk, `.*\.layers: 1`);
    # it keeps the 255 bins and 8 blocks so every code path has its real shape.
    "debug": dict(
        deter=32,
        hidden=16,
        stoch=4,
        classes=4,
        units=16,
        blocks=8,
        enc_layers=1,
        dec_layers=1,
        actor_layers=1,
        critic_layers=1,
    ),
    # configs.yaml `size1m` ... `size200m`: {deter, hidden, classes} and `units`.
    "1m": dict(deter=512, hidden=64, classes=4, units=64),
    # Not in the reference: for small tasks on a CPU (a swing-up, a balance task, CartPole) in
    # a few thousand env steps. The 1m preset with half the recurrent state, windows of 32
    # steps, and short-budget settings instead of the reference's lr 4e-5 / warm-up 1000;
    # each was measured, not guessed (docs/dreamerv3.md#short-budgets-the-small-preset,
    # docs/benchmarks/learning_*.md). train_ratio 512 is the 2023 reference code's
    # `dmc_proprio: run.train_ratio`; measured against 128 on all three kinds of task (at 128
    # the balance task does not stay up).
    "small": dict(deter=256, hidden=64, classes=4, units=64, batch_length=32,
                  train_ratio=512.0, lr=5e-4, warmup=100),
    "12m": dict(deter=2048, hidden=256, classes=16, units=256),
    "25m": dict(deter=3072, hidden=384, classes=24, units=384),
    "50m": dict(deter=4096, hidden=512, classes=32, units=512),
    "200m": dict(deter=8192, hidden=1024, classes=64, units=1024),
}
PRESETS: tuple[str, ...] = tuple(_SIZES)
_FIELDS = frozenset(f.name for f in dataclasses.fields(DreamerV3Config))


# DreamerV3's constructor arguments (SB3 names) that set config fields; ``load`` takes them too.
ARG_FIELDS: dict[str, str] = {"learning_rate": "lr", "train_ratio": "train_ratio",
                              "batch_size": "batch_size", "sequence_length": "batch_length"}


def overrides_from_args(policy_kwargs: dict[str, Any] | None, **args: Any) -> dict[str, Any]:
    """Config overrides: ``policy_kwargs``, then the :data:`ARG_FIELDS` arguments not None.

    Example:
        >>> overrides_from_args({"lr": 1e-4, "warmup": 10}, learning_rate=3e-4, batch_size=None)
        {'lr': 0.0003, 'warmup': 10}
    """
    overrides = dict(policy_kwargs or {})
    overrides.update({ARG_FIELDS[k]: v for k, v in args.items() if v is not None})
    return overrides


def make_config(preset: str = "1m", **overrides: Any) -> DreamerV3Config:
    """Build the config of a size preset, then apply overrides.

    Args:
        preset: One of ``"debug"``, ``"small"``, ``"1m"``, ``"12m"``, ``"25m"``, ``"50m"``,
            ``"200m"``.
        **overrides: Field names of :class:`DreamerV3Config` and their values.

    Returns:
        The frozen config.

    Raises:
        ConfigurationError: for an unknown preset or field name, or an invalid value.

    Example:
        >>> make_config("debug").deter
        32
        >>> make_config("1m", lr=1e-4).lr
        0.0001
    """
    if preset not in _SIZES:
        raise ConfigurationError(
            got=f"preset={preset!r}",
            expected=f"one of {', '.join(repr(p) for p in PRESETS)}",
            fix="pass preset='small' (small tasks, short runs), '1m' (the reference's proprio "
            "size) or another listed preset",
        )
    _check_keys(overrides)
    values: dict[str, Any] = {**_SIZES[preset], "preset": preset}
    values.update(overrides)
    return DreamerV3Config(**values)


def _check_keys(data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ConfigurationError(
            got=f"unknown DreamerV3Config field(s) {unknown}",
            expected=f"field names among {sorted(_FIELDS)}",
            fix="check the spelling against DreamerV3Config's fields",
        )


def _fail(name: str, value: Any, expected: str) -> None:
    raise ConfigurationError(got=f"{name}={value!r}", expected=expected, fix=f"pass a valid {name}")


_UNIT = ("unimix", "actor_unimix", "lam", "repval_lam", "slow_critic_rate")  # in [0, 1]
_POSITIVE = ("norm_eps", "lr", "agc_pmin", "train_ratio", "retnorm_rate")  # > 0
_BETAS = ("beta1", "beta2")  # in [0, 1)


def _validate(cfg: DreamerV3Config) -> None:
    positive = (
        "deter hidden stoch classes blocks units enc_layers dec_layers actor_layers "
        "critic_layers img_layers obs_layers dyn_layers imag_horizon horizon batch_size "
        "batch_length slow_critic_every"
    ).split()
    for name in positive:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(name, value, "an int >= 1")
    for name in ("rew_layers", "con_layers", "warmup"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            _fail(name, value, "an int >= 0")
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.type == "bool" and not isinstance(value, bool):
            _fail(f.name, value, "True or False")
        if f.type == "float":  # every float: a finite real number, then its range
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                _fail(f.name, value, "a number")
            if not math.isfinite(value):
                _fail(f.name, value, "a finite number")
            if f.name in _UNIT and not 0.0 <= value <= 1.0:
                _fail(f.name, value, "a float in [0, 1]")
            elif f.name in _POSITIVE and not value > 0.0:
                _fail(f.name, value, "a float > 0")
            elif f.name in _BETAS and not 0.0 <= value < 1.0:
                _fail(f.name, value, "a float in [0, 1)")
            elif value < 0.0:  # scales, outscales, free bits, eps, agc, ...: >= 0
                _fail(f.name, value, "a float >= 0")
    if cfg.deter % cfg.blocks:
        _fail("deter", cfg.deter, f"a multiple of blocks={cfg.blocks}")
    if isinstance(cfg.bins, bool) or not isinstance(cfg.bins, int) or cfg.bins < 2:
        _fail("bins", cfg.bins, "an int >= 2")
    if not cfg.actor_minstd <= cfg.actor_maxstd or not cfg.actor_minstd > 0:
        _fail("actor_minstd", cfg.actor_minstd, f"0 < actor_minstd <= {cfg.actor_maxstd}")
    if not 0.0 <= cfg.retnorm_low < cfg.retnorm_high <= 100.0:
        _fail("retnorm_low", cfg.retnorm_low, "0 <= retnorm_low < retnorm_high <= 100")
    if not (isinstance(cfg.compile, bool) or cfg.compile == "auto"):
        _fail("compile", cfg.compile, "True, False or 'auto'")
    if cfg.compute_dtype not in ("float32", "bfloat16", "mixed"):
        _fail("compute_dtype", cfg.compute_dtype, "'float32', 'bfloat16' or 'mixed'")
    try:
        re.compile(cfg.mlp_keys)
    except (re.error, TypeError):
        _fail("mlp_keys", cfg.mlp_keys, "a regular expression, e.g. '^(state|goal)$'")
