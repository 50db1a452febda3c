"""Validation of everything a DreamerV3 checkpoint holds, before any of it is used.

A checkpoint that passes the container checks of :mod:`physlink_gym.checkpoint` (a zip of JSON
and safetensors) can still hold values of the wrong type or shape: ``"data": [1, 2]``, a
``"seed"`` that is a string, an unknown parameter group, a random-number state of the wrong
length, an integer tensor where a float one belongs, NaN weights. Each check here names the
field and raises :class:`~physlink_gym.errors.CheckpointCorruptError`, so ``DreamerV3.load``
never fails with a raw ``TypeError`` or ``RuntimeError`` deep inside torch, and never casts
or silently accepts what it was not written with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from physlink_gym.errors import CheckpointCorruptError, ConfigurationError

__all__ = ["DATA_KEYS", "check_metadata", "check_optimizer", "check_policy", "check_resume"]

_INT = "int"
_NUM = "number"
# The attributes DreamerV3.save() stores in "data", and the only ones load() sets: their JSON
# types (None where listed) and ranges ``(low, high)``, ``None`` for no bound. A key not listed
# here is refused: a file sets only the fields its format defines (a key such as
# "_setup_model" would otherwise replace a method).
_DATA: dict[str, tuple[tuple[Any, ...], tuple[float | None, float | None]]] = {
    "preset": ((str,), (None, None)),
    "config_overrides": ((dict,), (None, None)),
    "policy_kwargs": ((dict, None), (None, None)),
    "verbose": ((_INT,), (0, None)),
    "num_timesteps": ((_INT,), (0, None)),
    "_total_timesteps": ((_INT,), (0, None)),
    "_num_timesteps_at_start": ((_INT,), (0, None)),
    "seed": ((_INT, None), (None, None)),
    "start_time": ((_NUM,), (0, None)),
    "learning_rate": ((_NUM,), (0, None)),
    "tensorboard_log": ((str, None), (None, None)),
    "_episode_num": ((_INT,), (0, None)),
    "use_sde": ((bool,), (None, None)),
    "sde_sample_freq": ((_INT,), (-1, None)),
    "_current_progress_remaining": ((_NUM,), (None, 1.0)),
    "_stats_window_size": ((_INT,), (1, None)),
    "_n_updates": ((_INT,), (0, None)),
    "n_envs": ((_INT,), (1, None)),
    "learning_starts": ((_INT,), (0, None)),
    "buffer_size": ((_INT,), (1, None)),
    "_update_credit": ((_NUM,), (0, 1.0)),
    "_warned_no_update": ((bool,), (None, None)),
}
#: The names save() may write (DreamerV3's ``include`` can name only these).
DATA_KEYS = frozenset(_DATA)
_LAPROP_GROUP = {"lr": _NUM, "eps": _NUM, "agc": _NUM, "agc_pmin": _NUM, "warmup": _INT}


def _corrupt(path: Any, what: str, fix: str = "") -> CheckpointCorruptError:
    return CheckpointCorruptError(
        got=f"{str(path)!r}: {what}",
        expected="a checkpoint written by DreamerV3.save()",
        fix=fix or "use a checkpoint saved by DreamerV3.save(), or an earlier copy",
    )


def _is(value: Any, kinds: tuple[Any, ...]) -> bool:
    for kind in kinds:
        if kind is None and value is None:
            return True
        if kind == _INT and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind == _NUM and isinstance(value, (int, float)) and not isinstance(value, bool):
            return math.isfinite(value)
        if isinstance(kind, type) and kind is not bool and isinstance(value, kind):
            return not isinstance(value, bool) or kind is bool
        if kind is bool and isinstance(value, bool):
            return True
    return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_metadata(path: Any, metadata: Mapping[str, Any]) -> None:
    """Types of the top-level metadata and of every known attribute in ``data``."""
    for key, kind in (("class", str), ("data", dict), ("observation_space", dict),
                      ("action_space", dict)):
        if not isinstance(metadata.get(key), kind):
            raise _corrupt(path, f"metadata[{key!r}] = {_short(metadata.get(key))}, not a "
                           f"{kind.__name__}")
    for key in ("config", "system_info"):
        if key in metadata and not isinstance(metadata[key], dict):
            raise _corrupt(path, f"metadata[{key!r}] = {_short(metadata[key])}, not a dict")
    for key, value in metadata["data"].items():
        if key not in _DATA:
            raise _corrupt(path, f"data[{_short(key)}], a key DreamerV3.save() never writes "
                           f"(it stores {sorted(_DATA)})")
        kinds, (low, high) = _DATA[key]
        ok = _is(value, kinds)
        if ok and isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = (low is None or value >= low) and (high is None or value <= high)
        if not ok:
            raise _corrupt(path, f"data[{key!r}] = {_short(value)}")
    overrides = metadata["data"].get("config_overrides") or {}
    if not all(isinstance(k, str) for k in overrides):
        raise _corrupt(path, f"data['config_overrides'] = {_short(overrides)}")


def _tensor_dict(path: Any, name: str, value: Any) -> dict[str, torch.Tensor]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        raise _corrupt(path, f"params[{name!r}] is not a dict of named tensors")
    return value


def check_policy(
    path: Any, ours: Mapping[str, torch.Tensor], theirs: Any, resized: bool
) -> None:
    """The stored weights against the rebuilt model: names, shapes, dtypes, finite values.

    Args:
        path: For messages.
        ours: The rebuilt policy's ``state_dict()``.
        theirs: ``params["policy"]`` from the file.
        resized: ``load()`` was given arguments that can change the network (``preset``,
            ``policy_kwargs``): a mismatch is then blamed on them (ConfigurationError).
    """
    theirs = _tensor_dict(path, "policy", theirs)

    def mismatch(what: str) -> Exception:
        if resized:
            return ConfigurationError(
                got=f"load() arguments that change the network ({what})",
                expected="the checkpoint's network sizes",
                fix="load without preset= or size overrides; to change sizes, train a new model",
            )
        return _corrupt(path, what)

    model = "the model built with these arguments" if resized else "the rebuilt model"
    shared = [name for name in theirs if name in ours]
    for name in shared:
        if theirs[name].shape != ours[name].shape:
            raise mismatch(f"{name}: {tuple(theirs[name].shape)} in the checkpoint, "
                           f"{tuple(ours[name].shape)} in {model}")
    only = sorted(set(ours) ^ set(theirs))
    if only:
        raise mismatch(f"{only[0]} is in only one of the checkpoint and {model}")
    for name, tensor in theirs.items():
        if tensor.dtype != ours[name].dtype:
            raise _corrupt(path, f"{name} is {tensor.dtype}, not {ours[name].dtype}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _corrupt(path, f"{name} holds NaN or inf values",
                           "the model diverged before it was saved; use an earlier checkpoint")


def check_optimizer(path: Any, params: list[list[torch.Tensor]], state: Any) -> None:
    """A LaProp ``state_dict``: one group per parameter group, moments shaped like the weights.

    Args:
        path: For messages.
        params: The rebuilt optimiser's parameters, per group.
        state: ``params["policy.optimizer"]`` from the file.
    """
    if not isinstance(state, dict) or set(state) != {"state", "param_groups"}:
        raise _corrupt(path, "the optimizer state is not {'state': ..., 'param_groups': [...]}")
    groups = state["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(params):
        raise _corrupt(path, f"{len(groups) if isinstance(groups, list) else '?'} optimizer "
                       f"parameter groups, not {len(params)}")
    shapes: dict[int, torch.Size] = {}
    for group, ours in zip(groups, params, strict=True):
        if not isinstance(group, dict):
            raise _corrupt(path, f"an optimizer parameter group {_short(group)}")
        ids = group.get("params")
        if not isinstance(ids, list) or len(ids) != len(ours) or not all(
            _is(i, (_INT,)) for i in ids
        ):
            raise _corrupt(path, "an optimizer parameter group lists other parameters")
        shapes.update({int(i): p.shape for i, p in zip(ids, ours, strict=True)})
        for key, kind in _LAPROP_GROUP.items():
            if not _is(group.get(key), (kind,)) or group[key] < 0:
                raise _corrupt(path, f"optimizer group {key} = {_short(group.get(key))}")
        betas = group.get("betas")
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2
                and all(_is(b, (_NUM,)) and 0 <= b < 1 for b in betas)):
            raise _corrupt(path, f"optimizer group betas = {_short(betas)}")
        step = group.get("step")
        count: Any = float(step) if isinstance(step, torch.Tensor) and step.numel() == 1 else step
        if not _is(count, (_NUM,)) or count < 0 or count != int(count):
            raise _corrupt(path, f"optimizer group step = {_short(step)}")
    moments = state["state"]
    if not isinstance(moments, dict):
        raise _corrupt(path, "the optimizer's per-parameter state is not a dict")
    for key, entry in moments.items():
        if not _is(key, (_INT,)) or key not in shapes or not isinstance(entry, dict):
            raise _corrupt(path, f"optimizer state for an unknown parameter {_short(key)}")
        for name in ("exp_avg", "exp_avg_sq"):
            value = entry.get(name)
            if not isinstance(value, torch.Tensor) or value.shape != shapes[key] or (
                not value.is_floating_point() or not bool(torch.isfinite(value).all())
            ):
                raise _corrupt(path, f"optimizer state {key}/{name} is missing, mis-shaped, "
                               "not float or not finite")


def check_resume(path: Any, resume: Any, obs_dim: int, state_shapes: list[tuple[int, ...]],
                 ) -> None:
    """The resume state: RNG states and, when present, the open env stream.

    Args:
        path: For messages.
        resume: ``params["__resume__"]`` from the file.
        obs_dim: Observation width.
        state_shapes: Per-row shapes of the recurrent state ``(h, z, previous action)``.
    """
    if not isinstance(resume, dict):
        raise _corrupt(path, "the resume state is not a dict")
    rng = resume.get("torch_rng")
    if rng is not None and not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8
                                and rng.shape == torch.get_rng_state().shape):
        raise _corrupt(path, "the torch random-number state has the wrong type or size")
    state = resume.get("numpy_rng")
    if state is not None:
        ok = isinstance(state, list) and len(state) == 5 and state[0] == "MT19937"
        ok = ok and isinstance(state[1], np.ndarray) and state[1].shape == (624,)
        ok = ok and state[1].dtype == np.uint32 and _is(state[2], (_INT,))
        ok = ok and 0 <= state[2] <= 624 and _is(state[3], (_INT,)) and _is(state[4], (_NUM,))
        if not ok:
            raise _corrupt(path, "the numpy random-number state has the wrong layout")
    if "policy_state" not in resume:
        return
    obs = resume.get("last_obs")
    if not isinstance(obs, np.ndarray) or obs.ndim != 2 or obs.shape[1] != obs_dim:
        raise _corrupt(path, f"last_obs of shape {getattr(obs, 'shape', None)}")
    n = obs.shape[0]
    tensors = resume["policy_state"]
    if not isinstance(tensors, (list, tuple)) or len(tensors) != len(state_shapes) or not all(
        isinstance(t, torch.Tensor) and t.is_floating_point() and tuple(t.shape) == (n, *shape)
        and bool(torch.isfinite(t).all()) for t, shape in zip(tensors, state_shapes, strict=False)
    ):
        raise _corrupt(path, "the recurrent policy state has the wrong shapes or values")
    starts = resume.get("last_episode_starts")
    if starts is not None and not (isinstance(starts, np.ndarray) and starts.shape == (n,)):
        raise _corrupt(path, "last_episode_starts has the wrong shape")
    original = resume.get("last_original_obs")
    if original is not None and not (isinstance(original, np.ndarray)
                                     and original.shape == obs.shape):
        raise _corrupt(path, "last_original_obs has the wrong shape")
