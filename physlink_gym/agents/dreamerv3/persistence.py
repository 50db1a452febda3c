"""Save and load DreamerV3 models as safe checkpoints (safetensors + JSON, never pickle).

A checkpoint holds the policy's weights and the optimiser state as tensors, and as JSON: the
class name, the config, the spaces and every JSON-serialisable attribute of the model (SB3 saves
``__dict__`` minus exclusions with cloudpickle; we keep the same selection rules but only what JSON
can represent, so loading never runs code from the file).

Exact resume. Besides the weights and optimiser state, a checkpoint carries the *resume state*
(tensors under ``__resume__``): the global torch and numpy RNG states and, when the model has an
open env stream, the recurrent policy state, the last observation and the episode-start flags.
The update credit, step and episode counters are plain attributes (JSON); the replay's sampling
RNG travels with :meth:`~DreamerV3.save_replay_buffer`. ``load`` restores the RNG states always,
and the stream when given the *same live env* with ``force_reset=False``: then
``learn(M, reset_num_timesteps=False)`` after saving at step N ends with exactly the weights of
``N + M`` uninterrupted steps (on CPU, fixed seed). The one thing a checkpoint cannot hold is
the env's own simulator state: with a fresh env (or ``force_reset=True``) the episode restarts,
which is the only source of difference from an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.utils import check_for_correct_spaces, get_device, get_system_info

from physlink_gym.agents.dreamerv3 import checkpoint_checks as checks
from physlink_gym.agents.dreamerv3 import distributed
from physlink_gym.agents.dreamerv3.config import ARG_FIELDS, make_config, overrides_from_args
from physlink_gym.agents.dreamerv3.policy import DreamerV3Policy
from physlink_gym.agents.dreamerv3.replay import SequenceReplay
from physlink_gym.checkpoint import flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from physlink_gym.errors import CheckpointCorruptError, ConfigurationError

if TYPE_CHECKING:
    from physlink_gym.agents.dreamerv3.algorithm import DreamerV3

__all__ = [
    "load_model",
    "load_replay",
    "save_model",
    "set_parameters",
    "space_from_json",
    "space_to_json",
]

M = TypeVar("M", bound="DreamerV3")

_RESUME = "__resume__"
_PARAM_KEYS = ("policy", "policy.optimizer")




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
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(),
                "start": space.start.tolist(), "dtype": str(space.dtype)}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": int(np.asarray(space.n))}
    if isinstance(space, spaces.Dict):  # a list of pairs keeps the keys' order
        return {"type": "Dict", "spaces": [[str(k), space_to_json(v)]
                                           for k, v in space.spaces.items()]}
    raise ConfigurationError(
        got=f"space {space}",
        expected="a Box, Dict of Boxes, Discrete, MultiDiscrete or MultiBinary space",
        fix="use a Box or Dict observation space and one of those action spaces",
    )


def space_from_json(data: dict[str, Any], _in_dict: bool = False) -> spaces.Space[Any]:
    """Inverse of :func:`space_to_json`; anything else is a ConfigurationError.

    A Box is 1-D (a vector), or 0-D as a key of a Dict; a Dict holds only such Boxes.
    """
    try:
        if isinstance(data, dict) and data.get("type") == "Dict" and not _in_dict:
            pairs = data["spaces"]
            if not (isinstance(pairs, list) and 0 < len(pairs) <= 256 and all(
                    isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                    for p in pairs)) or len({p[0] for p in pairs}) != len(pairs):
                raise ValueError("a Dict of another kind")
            children = {k: space_from_json(v, _in_dict=True) for k, v in pairs}
            if not all(isinstance(c, spaces.Box) for c in children.values()):
                raise ValueError("a Dict holds Boxes")
            return spaces.Dict(children)
        if isinstance(data, dict) and data.get("type") == "Box":
            dtype = np.dtype(str(data["dtype"]))
            shape = tuple(int(d) for d in data["shape"])
            low, high = np.array(data["low"], dtype=dtype), np.array(data["high"], dtype=dtype)
            dims = (0, 1) if _in_dict else (1,)
            if dtype.kind not in "fiu" or len(shape) not in dims or low.shape != shape or (
                high.shape != shape
            ) or not all(isinstance(d, int) and not isinstance(d, bool) for d in data["shape"]):
                raise ValueError("a Box of another kind")
            return spaces.Box(low, high, shape, dtype)
        if isinstance(data, dict) and data.get("type") == "Discrete":
            n, start = data["n"], data.get("start", 0)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, start)):
                raise ValueError("n and start must be ints")
            return spaces.Discrete(n, start=start)
        if isinstance(data, dict) and data.get("type") == "MultiDiscrete":
            nvec, start = data["nvec"], data["start"]
            dtype = np.dtype(str(data["dtype"]))
            if not (isinstance(nvec, list) and isinstance(start, list) and 0 < len(nvec) <= 4096
                    and len(start) == len(nvec) and dtype.kind in "iu"
                    and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                            for v in nvec)
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in start)):
                raise ValueError("a MultiDiscrete of another kind")
            return spaces.MultiDiscrete(np.array(nvec), dtype=dtype, start=np.array(start))
        if isinstance(data, dict) and data.get("type") == "MultiBinary":
            n = data["n"]
            if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 4096):
                raise ValueError("n must be an int")
            return spaces.MultiBinary(n)
    except (TypeError, ValueError, KeyError, OverflowError, AssertionError):
        pass
    raise ConfigurationError(
        got=f"a stored space {data!r}",
        expected="a Box, Dict of Boxes, Discrete, MultiDiscrete or MultiBinary description",
        fix="re-save the model with this version of physlink_gym",
    )


def _json_data(model: DreamerV3, exclude: Any, include: Any) -> dict[str, Any]:
    # SB3's rule: ``include`` wins over ``exclude`` (never over what JSON cannot hold); the
    # always-excluded names are SB3's own list, extended by DreamerV3._excluded_save_params.
    # Only the attributes the format defines are written (checks.DATA_KEYS), and load() sets
    # only those.
    unknown = sorted(set(include or ()) - checks.DATA_KEYS)
    if unknown:
        raise ConfigurationError(
            got=f"save(include={sorted(include)!r}): {unknown} not stored by the format",
            expected=f"names among {sorted(checks.DATA_KEYS)}",
            fix="store other values next to the checkpoint yourself (e.g. a JSON file)",
        )
    excluded = (set(exclude or ()) - set(include or ())) | set(model._excluded_save_params())
    data: dict[str, Any] = {}
    for key in sorted(checks.DATA_KEYS - excluded):
        if key not in model.__dict__:
            continue
        value = model.__dict__[key]
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        data[key] = value
    return data


def _schedule_value(model: DreamerV3) -> dict[str, Any]:
    # A learning-rate schedule is code, which JSON does not hold: store its value now.
    if not callable(model.learning_rate):
        return {}
    return {"learning_rate": float(model.lr_schedule(model._current_progress_remaining))}


def _route_config_kwargs(data: dict[str, Any], kwargs: dict[str, Any]) -> None:
    # ``load(path, train_ratio=...)`` changes the config as ``DreamerV3(..., train_ratio=...)``
    # would (not a dead attribute). A float learning_rate also stays in kwargs: the attribute.
    args = {k: kwargs.pop(k) for k in list(kwargs) if k in ARG_FIELDS and k != "learning_rate"}
    lr = kwargs.get("learning_rate")
    if not callable(lr):
        args["learning_rate"] = lr
    stored = data.get("config_overrides") or {}
    data["config_overrides"] = overrides_from_args(
        {**stored, **(kwargs.pop("policy_kwargs", None) or {})}, **args)


def _suffixed(path: Any) -> pathlib.Path:
    target = pathlib.Path(path)
    return target if target.suffix else target.with_suffix(".zip")


def _resume_state(model: DreamerV3) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": list(np.random.get_state()),
    }
    if model._policy_state is not None and model._last_obs is not None:
        state["policy_state"] = [t.detach().cpu() for t in model._policy_state]
        state["last_obs"] = _obs_array(model, model._last_obs)
        if model._last_episode_starts is not None:
            state["last_episode_starts"] = np.asarray(model._last_episode_starts)
        if model._last_original_obs is not None:
            state["last_original_obs"] = _obs_array(model, model._last_original_obs)
    return state


def _obs_array(model: DreamerV3, obs: Any) -> np.ndarray:
    """An observation batch as one array: a Dict's keys side by side (the learner's rows)."""
    return model.policy.flat_obs(obs) if isinstance(obs, dict) else np.asarray(obs)


def _restore_resume(model: DreamerV3, state: dict[str, Any], stream: bool) -> None:
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"].to("cpu", torch.uint8))
    if "numpy_rng" in state:
        kind, keys, pos, has_gauss, cached = state["numpy_rng"]
        np.random.set_state((kind, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    if not stream or "policy_state" not in state:
        return
    n_envs = model.n_envs
    if state["last_obs"].shape[0] != n_envs:
        return  # another number of envs: the stream restarts
    model._policy_state = tuple(t.to(model.device) for t in state["policy_state"])
    model._last_obs = state["last_obs"]
    model._last_episode_starts = state.get("last_episode_starts", np.zeros(n_envs, bool))
    model._last_original_obs = state.get("last_original_obs")
    model._entries = None


def save_model(model: DreamerV3, path: Any, exclude: Any = None, include: Any = None) -> None:
    """Write ``model`` to ``path`` atomically (see the module docstring)."""
    tree = {**model.get_parameters(), _RESUME: _resume_state(model)}
    tensors, skeleton = flatten_state(tree)
    metadata = {
        "class": type(model).__name__,
        "num_timesteps": int(model.num_timesteps),
        "config": dataclasses.asdict(model.config),
        "observation_space": space_to_json(model.observation_space),
        "action_space": space_to_json(model.action_space),
        "policy_class": _policy_name(model.policy_class),
        "system_info": get_system_info(print_info=False)[0],
        "data": _json_data(model, exclude, include) | _schedule_value(model),
        "params": skeleton,
    }
    save_checkpoint(_suffixed(path), tensors, metadata)


def _policy_name(policy_class: Any) -> str:
    """``"MlpPolicy"`` for the built-in policy, else the class's ``module.qualname``."""
    if policy_class is DreamerV3Policy:
        return "MlpPolicy"
    return f"{policy_class.__module__}.{policy_class.__qualname__}"


def _policy_class(path: Any, stored: Any, given: Any) -> Any:
    """The policy class to rebuild: the built-in one, or the class passed in custom_objects.

    A checkpoint names its policy class but never imports it (that would run code named by the
    file): a custom class must come from ``custom_objects={"policy_class": MyPolicy}``.
    """
    if given is not None:
        if _policy_name(given) != stored:
            raise ConfigurationError(
                got=f"custom_objects['policy_class']={_policy_name(given)!r}",
                expected=f"the class the checkpoint was saved with ({stored!r})",
                fix="pass the same policy class the model was trained with",
            )
        return given
    if stored == "MlpPolicy":
        return "MlpPolicy"
    if isinstance(stored, str):
        raise ConfigurationError(
            got=f"a checkpoint saved with the custom policy class {stored!r}",
            expected="the class itself, which a checkpoint never imports",
            fix=f"load it with custom_objects={{'policy_class': <the class {stored}>}}",
        )
    raise CheckpointCorruptError(
        got=f"{str(path)!r}: policy_class = {stored!r}",
        expected="a checkpoint written by DreamerV3.save()",
        fix="use a checkpoint saved by DreamerV3.save(), or an earlier copy",
    )


def _read(path: Any, device: Any = "cpu") -> tuple[dict[str, Any], dict[str, Any], pathlib.Path]:
    path = pathlib.Path(path)
    if not path.exists() and not path.suffix:
        path = path.with_suffix(".zip")
    tensors, metadata = load_checkpoint(path, device=get_device(device))
    for key in ("class", "params", "data", "observation_space", "action_space"):
        if key not in metadata:
            raise CheckpointCorruptError(
                got=f"{str(path)!r}: checkpoint metadata without {key!r}",
                expected="a checkpoint written by DreamerV3.save()",
                fix="use a checkpoint saved by DreamerV3.save(), or an earlier copy",
            )
    checks.check_metadata(path, metadata)
    params = unflatten_state(metadata["params"], tensors)
    if not isinstance(params, dict) or not set(_PARAM_KEYS) <= set(params) <= {*_PARAM_KEYS,
                                                                              _RESUME}:
        raise CheckpointCorruptError(
            got=f"{str(path)!r}: parameters stored as "
            f"{sorted(map(repr, params)) if isinstance(params, dict) else type(params).__name__}",
            expected=f"a dict with the keys {[*_PARAM_KEYS, _RESUME]}",
            fix="use an earlier checkpoint",
        )
    return params, metadata, path


def load_model(
    cls: type[M], path: Any, *, env: Any = None, device: torch.device | str = "auto",
    custom_objects: dict[str, Any] | None = None, force_reset: bool = True,
    print_system_info: bool = False, **kwargs: Any,
) -> M:
    """Rebuild a model from a checkpoint.

    ``custom_objects`` follow SB3's ``load``: a key replaces the value stored in the checkpoint
    (an attribute, or ``observation_space`` / ``action_space``) and a key the checkpoint does
    not store is ignored. The RL Zoo's ``enjoy`` passes ``learning_rate=0.0`` (stored: it only
    sets the optimiser's rate for further updates) and ``lr_schedule`` and ``clip_range`` (not
    stored: ignored; ``lr_schedule`` is rebuilt from ``learning_rate``). The config, including
    a stored ``lr`` override, is not an attribute and keeps its validated values.
    """
    params, metadata, path = _read(path)
    resume = params.pop(_RESUME, {})
    if print_system_info:
        saved = metadata.get("system_info")
        print("== SAVED MODEL SYSTEM INFO ==")
        print("\n".join(f"- {k}: {v}" for k, v in saved.items()) if isinstance(saved, dict)
              else "(not stored in this checkpoint)")
        print("== CURRENT SYSTEM INFO ==")
        get_system_info(print_info=True)
    if metadata.get("class") != cls.__name__:
        raise ConfigurationError(
            got=f"a checkpoint of {metadata.get('class')!r}",
            expected=f"a checkpoint written by {cls.__name__}.save()",
            fix=f"load it with {metadata.get('class')}.load()",
        )
    try:
        spaces_ = [space_from_json(metadata[k]) for k in ("observation_space", "action_space")]
        stored = metadata["data"]
        make_config(stored.get("preset", "1m"), **(stored.get("config_overrides") or {}))
    except ConfigurationError as exc:
        raise CheckpointCorruptError(
            got=f"{str(path)!r}: a stored space or configuration that is not valid ({exc})",
            expected="a checkpoint written by DreamerV3.save()",
            fix="use a checkpoint saved by DreamerV3.save(), or an earlier copy",
        ) from None
    data = {**metadata["data"], "observation_space": spaces_[0], "action_space": spaces_[1]}
    data.update({k: v for k, v in (custom_objects or {}).items() if k in data})
    policy_class = _policy_class(path, metadata.get("policy_class", "MlpPolicy"),
                                 (custom_objects or {}).get("policy_class"))
    obs_space, act_space = data.pop("observation_space"), data.pop("action_space")
    if policy_class == "MlpPolicy" and isinstance(obs_space, spaces.Dict):
        policy_class = "MultiInputPolicy"  # the same class; SB3 names it by the space
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
    resized = "preset" in kwargs or "policy_kwargs" in kwargs
    _route_config_kwargs(data, kwargs)
    data["preset"] = kwargs.pop("preset", data.get("preset", "1m"))
    model = cls(policy_class, env=env, device=device, preset=data["preset"],
                policy_kwargs=data["config_overrides"], _init_setup_model=False)
    for key in checks.DATA_KEYS & data.keys():  # checked by check_metadata: nothing else
        setattr(model, key, data[key])
    model.__dict__.update(kwargs)  # the caller's own attributes, as SB3's load sets them
    # data-parallel: this rank's own seed (envs, replay draws), rank 0 alone logs
    model.rank, model.seed, model.tensorboard_log, model.verbose = distributed.per_rank(
        model.seed, model.tensorboard_log, model.verbose)
    model.observation_space = obs_space
    model.action_space = act_space
    model._setup_model()
    _set_checked(model, params, path, resized=resized, exact_match=True)
    model._last_obs = None
    policy = model.policy
    checks.check_resume(path, resume, policy.obs_dim,
                        [(s.shape[1],) for s in policy.initial_state(1)])
    _restore_resume(model, resume, stream=env is not None and not force_reset)
    if model.rank:  # rank 0's random state was restored: draw this rank's own noise from here on
        if model.seed is not None:  # already seed + rank
            torch.manual_seed(int(model.seed))
            np.random.seed(int(model.seed) % 2**32)
        else:
            torch.seed()
            np.random.seed()
    return model


def set_parameters(model: DreamerV3, source: Any, exact_match: bool = True,
                   device: Any = "auto") -> None:
    """Load ``{"policy": state_dict, "policy.optimizer": state_dict}`` or a checkpoint path."""
    path: Any
    if isinstance(source, dict):
        params, path = source, "the parameters passed"
        expected = set(model._get_torch_save_params()[0])
        unknown = set(params) - expected
        if unknown:
            raise ValueError(f"Key {sorted(unknown)[0]} is an invalid object name.")
    else:
        params, _, path = _read(source, device)
        params.pop(_RESUME, None)
    _set_checked(model, params, path, resized=False, exact_match=exact_match)


def _set_checked(model: DreamerV3, params: dict[str, Any], path: Any, resized: bool,
                 exact_match: bool) -> None:
    """Validate ``params`` against ``model`` (names, shapes, dtypes, finite), then load them."""
    expected = set(model._get_torch_save_params()[0])
    if "policy" in params:
        if exact_match:
            checks.check_policy(path, model.policy.state_dict(), params["policy"], resized)
        model.policy.load_state_dict(params["policy"], strict=exact_match)
    if "policy.optimizer" in params:
        optimizer = model.policy.optimizer
        checks.check_optimizer(path, [list(g["params"]) for g in optimizer.param_groups],
                               params["policy.optimizer"])
        optimizer.load_state_dict(params["policy.optimizer"])
    if exact_match and set(params) != expected:
        raise ValueError(
            "Names of parameters do not match agents' parameters: "
            f"expected {expected}, got {set(params)}"
        )


def load_replay(model: DreamerV3, path: Any) -> SequenceReplay:
    """Read a replay file (npz, never pickle) and check it fits ``model``'s spaces."""
    replay = SequenceReplay.load(path)
    ours = model.replay_buffer
    if ours is not None and (replay.obs_dim, replay.action_dim) != (ours.obs_dim, ours.action_dim):
        raise ConfigurationError(
            got=f"a replay buffer with obs_dim={replay.obs_dim}, action_dim={replay.action_dim}",
            expected=f"obs_dim={ours.obs_dim}, action_dim={ours.action_dim} (this model's spaces)",
            fix="load the replay buffer saved together with this model",
        )
    return replay
