"""Save and load DreamerV3 models as safe checkpoints (safetensors + JSON, never pickle).

A checkpoint holds the policy's weights and the optimiser state as tensors, and as JSON: the
class name, the config, the spaces and every JSON-serialisable attribute of the model (SB3 saves
``__dict__`` minus exclusions with cloudpickle; we keep the same selection rules but only what JSON
can represent, so loading never runs code from the file).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.utils import check_for_correct_spaces

from physlink_gym.checkpoint import flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from physlink_gym.errors import ConfigurationError

if TYPE_CHECKING:
    from physlink_gym.agents.dreamerv3.algorithm import DreamerV3

__all__ = ["load_model", "save_model", "set_parameters", "space_from_json", "space_to_json"]

M = TypeVar("M", bound="DreamerV3")

# Never stored as data: live objects, or stored separately (spaces, tensors).
_ALWAYS_EXCLUDED = {
    "policy", "device", "env", "replay_buffer", "rollout_buffer", "_vec_normalize_env",
    "_logger", "_custom_logger", "observation_space", "action_space", "policy_class",
    "lr_schedule", "_last_obs", "_last_original_obs", "_last_episode_starts",
    "ep_info_buffer", "ep_success_buffer", "_policy_state", "_entries", "invariant_stats",
    "action_noise",
}


def space_to_json(space: spaces.Space[Any]) -> dict[str, Any]:
    """Describe a Box or Discrete space as JSON-serialisable data.

    Example:
        >>> import numpy as np
        >>> from gymnasium import spaces
        >>> box = spaces.Box(-1.0, 1.0, (2,), np.float32)
        >>> space_from_json(space_to_json(box)) == box
        True
    """
    if isinstance(space, spaces.Box):
        return {"type": "Box", "low": space.low.tolist(), "high": space.high.tolist(),
                "shape": list(space.shape), "dtype": str(space.dtype)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    raise ConfigurationError(
        got=f"space {space}", expected="a Box or Discrete space",
        fix="use a Box observation space and a Box or Discrete action space",
    )


def space_from_json(data: dict[str, Any]) -> spaces.Space[Any]:
    """Inverse of :func:`space_to_json`."""
    if data.get("type") == "Box":
        return spaces.Box(np.array(data["low"], dtype=data["dtype"]),
                          np.array(data["high"], dtype=data["dtype"]),
                          tuple(data["shape"]), np.dtype(data["dtype"]))  # type: ignore[arg-type]
    if data.get("type") == "Discrete":
        return spaces.Discrete(int(data["n"]), start=int(data.get("start", 0)))
    raise ConfigurationError(
        got=f"a stored space {data!r}", expected="a Box or Discrete description",
        fix="re-save the model with this version of physlink_gym",
    )


def _json_data(model: DreamerV3, exclude: Any, include: Any) -> dict[str, Any]:
    excluded = set(exclude or ()) | _ALWAYS_EXCLUDED
    excluded -= set(include or ()) - _ALWAYS_EXCLUDED
    data: dict[str, Any] = {}
    for key, value in model.__dict__.items():
        if key in excluded:
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        data[key] = value
    return data


def _suffixed(path: Any) -> pathlib.Path:
    path = pathlib.Path(path)
    return path if path.suffix else path.with_suffix(".zip")


def save_model(model: DreamerV3, path: Any, exclude: Any = None, include: Any = None) -> None:
    """Write ``model`` to ``path`` atomically (see the module docstring)."""
    tensors, skeleton = flatten_state(model.get_parameters())
    metadata = {
        "class": type(model).__name__,
        "num_timesteps": int(model.num_timesteps),
        "config": dataclasses.asdict(model.config),
        "observation_space": space_to_json(model.observation_space),
        "action_space": space_to_json(model.action_space),
        "data": _json_data(model, exclude, include),
        "params": skeleton,
    }
    save_checkpoint(_suffixed(path), tensors, metadata)


def _read(path: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    path = pathlib.Path(path)
    if not path.exists() and not path.suffix:
        path = path.with_suffix(".zip")
    tensors, metadata = load_checkpoint(path)
    return unflatten_state(metadata["params"], tensors), metadata


def load_model(
    cls: type[M], path: Any, *, env: Any = None, device: torch.device | str = "auto",
    custom_objects: dict[str, Any] | None = None, force_reset: bool = True, **kwargs: Any,
) -> M:
    """Rebuild a model from a checkpoint; ``custom_objects`` replace stored attributes."""
    params, metadata = _read(path)
    if metadata.get("class") != cls.__name__:
        raise ConfigurationError(
            got=f"a checkpoint of {metadata.get('class')!r}",
            expected=f"a checkpoint written by {cls.__name__}.save()",
            fix=f"load it with {metadata.get('class')}.load()",
        )
    obs_space = space_from_json(metadata["observation_space"])
    act_space = space_from_json(metadata["action_space"])
    data = dict(metadata["data"])
    data.update(custom_objects or {})
    if env is not None:
        env = cls._wrap_env(env, data.get("verbose", 0))
        try:
            check_for_correct_spaces(env, obs_space, act_space)
        except ValueError as exc:
            raise ConfigurationError(
                got=f"an env whose spaces differ from the checkpoint's ({exc})",
                expected=f"observation space {obs_space} and action space {act_space}",
                fix="pass an env of the same task the model was trained on",
            ) from None
        data["n_envs"] = env.num_envs
    model = cls("MlpPolicy", env=env, device=device, preset=data.get("preset", "1m"),
                policy_kwargs=data.get("config_overrides"), _init_setup_model=False)
    model.__dict__.update(data)
    model.__dict__.update(kwargs)
    model.observation_space = obs_space
    model.action_space = act_space
    model._setup_model()
    set_parameters(model, params, exact_match=True)
    if env is None or force_reset:
        model._last_obs = None
    return model


def set_parameters(model: DreamerV3, source: Any, exact_match: bool = True) -> None:
    """Load ``{"policy": state_dict, "policy.optimizer": state_dict}`` or a checkpoint path."""
    params = source if isinstance(source, dict) else _read(source)[0]
    expected = set(model._get_torch_save_params()[0])
    unknown = set(params) - expected
    if unknown:
        raise ValueError(f"Key {sorted(unknown)[0]} is an invalid object name.")
    if "policy" in params:
        model.policy.load_state_dict(params["policy"], strict=exact_match)
    if "policy.optimizer" in params:
        model.policy.optimizer.load_state_dict(params["policy.optimizer"])
    if exact_match and set(params) != expected:
        raise ValueError(
            "Names of parameters do not match agents' parameters: "
            f"expected {expected}, got {set(params)}"
        )
