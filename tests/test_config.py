"""DreamerV3Config: reference defaults, size presets, overrides, errors, JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from physlink_gym.agents.dreamerv3.config import PRESETS, DreamerV3Config, make_config
from physlink_gym.errors import ConfigurationError

# configs.yaml `size1m` ... `size200m` (danijar/dreamerv3, 2024-12 and later).
REFERENCE_SIZES = {
    "1m": (512, 64, 4, 64),
    "12m": (2048, 256, 16, 256),
    "25m": (3072, 384, 24, 384),
    "50m": (4096, 512, 32, 512),
    "200m": (8192, 1024, 64, 1024),
}


def test_preset_names() -> None:
    assert PRESETS == ("debug", "1m", "small", "12m", "25m", "50m", "200m")


def test_small_preset_is_1m_with_half_the_state_and_short_budget_settings() -> None:
    small, ref = make_config("small"), make_config("1m")
    assert (small.deter, small.hidden, small.classes, small.units) == (256, 64, 4, 64)
    assert (small.batch_size, small.batch_length) == (16, 32)
    assert (small.lr, small.warmup, small.train_ratio) == (5e-4, 100, 512.0)
    same = {f.name for f in dataclasses.fields(ref)} - {
        "deter", "batch_length", "train_ratio", "lr", "warmup", "preset"}
    assert all(getattr(small, k) == getattr(ref, k) for k in same)


@pytest.mark.parametrize("preset", sorted(REFERENCE_SIZES))
def test_preset_sizes_match_reference(preset: str) -> None:
    cfg = make_config(preset)
    assert (cfg.deter, cfg.hidden, cfg.classes, cfg.units) == REFERENCE_SIZES[preset]
    assert (cfg.stoch, cfg.blocks, cfg.preset) == (32, 8, preset)
    assert cfg.feat_dim == cfg.deter + 32 * cfg.classes


def test_debug_preset_is_tiny_but_complete() -> None:
    cfg = make_config("debug")
    assert cfg.deter <= 64 and cfg.units <= 32 and cfg.deter % cfg.blocks == 0
    assert cfg.bins == 255  # the real two-hot shape even in tests


def test_reference_defaults() -> None:
    cfg = make_config()
    assert cfg == DreamerV3Config()  # the dataclass defaults are the 1m preset
    assert (cfg.enc_layers, cfg.dec_layers, cfg.rew_layers, cfg.con_layers) == (3, 3, 1, 1)
    assert (cfg.actor_layers, cfg.critic_layers) == (3, 3)
    assert (cfg.unimix, cfg.free_nats, cfg.bins) == (0.01, 1.0, 255)
    scales = (cfg.scale_dyn, cfg.scale_rep, cfg.scale_dec, cfg.scale_rew, cfg.scale_con)
    assert scales == (1.0, 0.1, 1.0, 1.0, 1.0)
    assert (cfg.scale_policy, cfg.scale_value, cfg.scale_repval) == (1.0, 1.0, 0.3)
    assert (cfg.imag_horizon, cfg.lam, cfg.horizon, cfg.actent) == (15, 0.95, 333, 3e-4)
    assert cfg.discount == pytest.approx(1 - 1 / 333, abs=0)
    assert (cfg.retnorm_rate, cfg.retnorm_low, cfg.retnorm_high, cfg.retnorm_limit) == (
        0.01, 5.0, 95.0, 1.0,
    )  # fmt: skip
    assert (cfg.slow_critic_rate, cfg.slowreg) == (0.02, 1.0)
    assert (cfg.lr, cfg.eps, cfg.beta1, cfg.beta2) == (4e-5, 1e-20, 0.9, 0.999)
    assert (cfg.agc, cfg.agc_pmin, cfg.warmup) == (0.3, 1e-3, 1000)
    assert (cfg.actor_outscale, cfg.rew_outscale, cfg.critic_outscale) == (0.01, 0.0, 0.0)
    assert (cfg.actor_minstd, cfg.actor_maxstd) == (0.1, 1.0)
    assert (cfg.batch_size, cfg.batch_length, cfg.train_ratio) == (16, 64, 1024.0)
    assert cfg.contdisc and cfg.repval_loss and cfg.repval_grad and not cfg.ac_grads


def test_overrides_apply_and_config_is_frozen() -> None:
    cfg = make_config("12m", lr=1e-4, batch_size=8, imag_horizon=10)
    assert (cfg.lr, cfg.batch_size, cfg.imag_horizon, cfg.deter) == (1e-4, 8, 10, 2048)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    assert make_config("1m", deter=256).deter == 256  # overrides beat the preset


def test_unknown_preset_lists_choices() -> None:
    with pytest.raises(ConfigurationError) as info:
        make_config("3m")
    message = str(info.value)
    assert "'3m'" in message and "'12m'" in message and "'debug'" in message
    assert message.startswith("Got: ")


def test_unknown_override_lists_fields() -> None:
    with pytest.raises(ConfigurationError, match=r"learning_rate.*Expected: field names.*'lr'"):
        make_config("1m", learning_rate=1e-4)


@pytest.mark.parametrize(
    "bad",
    [
        {"deter": 500},  # not a multiple of 8 blocks
        {"units": 0},
        {"batch_size": True},
        {"unimix": 1.5},
        {"actor_minstd": 2.0},
        {"retnorm_low": 96.0},
        {"compute_dtype": "float16"},
        {"lr": 0.0},
        {"compile": "yes"},
        {"compile": 1},
    ],
)
def test_invalid_values_raise(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        make_config("1m", **bad)


def test_json_round_trip() -> None:
    cfg = make_config("25m", lr=2e-4, compile=True)
    text = json.dumps(dataclasses.asdict(cfg))
    back = DreamerV3Config.from_dict(json.loads(text))
    assert back == cfg and back.to_dict() == cfg.to_dict()


def test_from_dict_rejects_unknown_keys() -> None:
    data = make_config().to_dict() | {"nonsense": 1}
    with pytest.raises(ConfigurationError, match="nonsense"):
        DreamerV3Config.from_dict(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [("scale_dec", float("nan")), ("train_ratio", float("inf")), ("lr", float("nan")),
     ("lr", 0.0), ("actent", -1.0), ("free_nats", float("-inf")), ("beta2", 1.0),
     ("retnorm_rate", 0.0), ("eps", "1e-20"), ("agc", True), ("unimix", 1.5),
     ("norm_eps", 0.0), ("slowreg", float("nan")), ("contdisc", 1), ("bins", 255.0),
     ("actor_maxstd", float("inf"))],
)
def test_every_float_setting_is_finite_and_in_range(field: str, value: object) -> None:
    # Regression: scale_dec=nan passed, and train_ratio=inf raised OverflowError deep inside.
    with pytest.raises(ConfigurationError, match=field):
        make_config("debug", **{field: value})
