"""Trajectories from what users have: lists of per-step dicts, and Minari datasets.

:func:`from_list` turns a list of per-step dicts (a robot log, another stack's controller run)
into the entry format; :func:`from_minari` and :func:`to_minari` read and write Minari, the
Farama standard for offline-RL data (the ``minari`` extra). Both keep the entry convention of
:class:`~physlink_gym.data.Trajectories`: one entry per observation, the action and reward on
the entry they led into, truncation apart from termination.

Example:
    >>> steps = [{"obs": [0.0], "action": [1.0], "reward": 1.0, "terminated": False,
    ...           "truncated": False},
    ...          {"obs": [0.5], "action": [1.0], "reward": 1.0, "terminated": True,
    ...           "truncated": False, "next_obs": [1.0], "cost": 0.1}]
    >>> data = from_list(steps)
    >>> data.obs[:, 0].tolist(), data.reward.tolist(), data.is_terminal.tolist()
    ([0.0, 0.5, 1.0], [0.0, 1.0, 1.0], [False, False, True])
    >>> data.extras["cost"].tolist()
    [0.0, 0.0, 0.10000000149011612]
"""

from __future__ import annotations

import numbers
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from physlink_gym.errors import ConfigurationError, ValidationError

__all__ = ["from_list", "from_minari", "to_minari"]

REQUIRED = ("obs", "action", "reward", "terminated", "truncated")
_KNOWN = {*REQUIRED, "next_obs", "valid"}


def _bad(index: int, key: str, got: str, expected: str) -> ValidationError:
    return ValidationError(
        got=f"steps[{index}][{key!r}] = {got}",
        expected=expected,
        fix="give every step the keys obs, action, reward, terminated, truncated (next_obs "
        "where an episode ends) with numbers of one shape per key",
    )


def _numeric(index: int, key: str, value: Any, shape: tuple[int, ...] | None) -> np.ndarray:
    if isinstance(value, (str, bytes)) or value is None:
        raise _bad(index, key, repr(value)[:60], "a number or an array of numbers")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _bad(index, key, repr(value)[:60], "a number or an array of numbers") from None
    if shape is not None and array.shape != shape:
        raise _bad(index, key, f"an array of shape {array.shape}",
                   f"shape {shape}, as in the first step")
    return array


def _flag(index: int, key: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)) or (
        isinstance(value, numbers.Integral) and value in (0, 1)
    ):
        return bool(value)
    raise _bad(index, key, repr(value)[:60], "True or False")


def from_list(steps: Sequence[Mapping[str, Any]], *, action_space: Any = None,
              meta: Mapping[str, Any] | None = None) -> Any:
    """Build :class:`~physlink_gym.data.Trajectories` from per-step dicts.

    Each dict holds one transition: ``obs``, ``action``, ``reward``, ``terminated``,
    ``truncated``, optionally ``next_obs`` and ``valid`` (bool), and any further numeric keys,
    kept as ``extras`` (e.g. ``cost``). A step with ``terminated`` or ``truncated`` ends its
    episode; the next step starts a new one. ``next_obs`` is needed where it cannot be read from
    the following step: at the end of every episode and of the list.

    Args:
        steps: The transitions, in order; one or many episodes.
        action_space: The env's action space (a Gymnasium space); a Discrete one records
            ``meta["discrete"]`` and ``meta["n_actions"]``.
        meta: Extra JSON-serialisable description kept in ``Trajectories.meta``.

    Returns:
        The trajectories.

    Raises:
        ValidationError: An empty list, a missing key, shapes that differ between steps, a
            value that is not numeric, or a missing ``next_obs``, naming the step and key.
    """
    from physlink_gym.data.trajectories import Trajectories

    if not isinstance(steps, Sequence) or isinstance(steps, (str, bytes)) or not steps:
        raise ValidationError(got=f"steps of type {type(steps).__name__} (len "
                              f"{len(steps) if hasattr(steps, '__len__') else '?'})",
                              expected="a non-empty list of per-step dicts",
                              fix="pass [{'obs': ..., 'action': ..., 'reward': ..., "
                              "'terminated': ..., 'truncated': ...}, ...]")
    shapes: dict[str, tuple[int, ...]] = {}
    extra_keys: list[str] = []
    for index, step in enumerate(steps):
        if not isinstance(step, Mapping):
            raise _bad(index, "", f"a {type(step).__name__}", "a dict")
        missing = [k for k in REQUIRED if k not in step]
        if missing:
            raise _bad(index, missing[0], "missing", f"the keys {list(REQUIRED)}")
        for key in step:
            if key not in _KNOWN and key not in extra_keys:
                extra_keys.append(str(key))
    rows: dict[str, list[Any]] = {k: [] for k in ("obs", "action", "reward", "is_first",
                                                   "is_terminal", "is_last", "valid")}
    extras: dict[str, list[np.ndarray]] = {k: [] for k in extra_keys}

    def entry(obs: np.ndarray, action: np.ndarray, reward: float, first: bool, terminal: bool,
              last: bool, valid: bool, step: Mapping[str, Any] | None, index: int) -> None:
        for key, value in zip(rows, (obs, action, reward, first, terminal, last, valid),
                              strict=True):
            rows[key].append(value)
        for key in extra_keys:
            value = step.get(key) if step is not None else None
            shape = shapes.get("extra." + key)
            if value is None:
                extras[key].append(np.zeros(shape or (), np.float64))
                continue
            array = _numeric(index, key, value, shape)
            shapes.setdefault("extra." + key, array.shape)
            extras[key].append(array)

    new_episode = True
    for index, step in enumerate(steps):
        obs = _numeric(index, "obs", step["obs"], shapes.get("obs"))
        shapes.setdefault("obs", obs.shape)
        action = _numeric(index, "action", step["action"], shapes.get("action"))
        shapes.setdefault("action", action.shape)
        reward = _numeric(index, "reward", step["reward"], ())
        terminated = _flag(index, "terminated", step["terminated"])
        truncated = _flag(index, "truncated", step["truncated"])
        valid = _flag(index, "valid", step.get("valid", True))
        if new_episode:
            entry(obs, np.zeros_like(action), 0.0, True, False, False, True, None, index)
        ends = terminated or truncated or index == len(steps) - 1
        if "next_obs" in step:
            next_obs = _numeric(index, "next_obs", step["next_obs"], shapes["obs"])
        elif not ends:
            next_obs = _numeric(index + 1, "obs", steps[index + 1]["obs"], shapes["obs"])
        else:
            raise _bad(index, "next_obs", "missing at the end of an episode",
                       "next_obs on every step that ends an episode or the list")
        entry(next_obs, action, float(reward), False, terminated, ends, valid, step, index)
        new_episode = terminated or truncated
    action_array = np.asarray(rows["action"], np.float32).reshape(len(rows["action"]), -1)
    info: dict[str, Any] = dict(meta or {})
    info.update(_space_meta(action_space))
    return Trajectories(
        obs=np.asarray(rows["obs"], np.float32), action=action_array,
        reward=np.asarray(rows["reward"], np.float32),
        is_first=np.asarray(rows["is_first"]), is_terminal=np.asarray(rows["is_terminal"]),
        is_last=np.asarray(rows["is_last"]), valid=np.asarray(rows["valid"]),
        extras={k: np.asarray(v, np.float32) for k, v in extras.items()}, meta=info,
    )


def _space_meta(space: Any) -> dict[str, Any]:
    if space is None:
        return {}
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return {"discrete": True, "n_actions": int(space.n)}
    return {"discrete": False, "action_shape": [int(d) for d in (space.shape or ())]}


# ------------------------------------------------------------------------------------- Minari
def _minari() -> Any:
    try:
        import minari
    except ModuleNotFoundError as exc:
        from physlink_gym import missing_extra

        raise missing_extra(exc, "Minari datasets") from None
    return minari


def from_minari(dataset: Any) -> Any:
    """Read a Minari dataset (a ``MinariDataset`` or a local dataset id) as Trajectories.

    Every episode becomes ``T + 1`` entries (the reset observation first). Terminations and
    truncations map to ``is_terminal`` / ``is_last``; numeric per-step ``infos`` become extras
    (``physlink_valid`` is read back as ``valid``, see :func:`to_minari`). Observations and
    actions must be arrays (Box or Discrete spaces).
    """
    from physlink_gym.data.trajectories import Trajectories

    minari = _minari()
    if isinstance(dataset, str):
        dataset = minari.load_dataset(dataset)
    parts = []
    for episode in dataset.iterate_episodes():
        obs = np.asarray(episode.observations, np.float32)
        steps = len(episode.rewards)
        if not isinstance(episode.observations, np.ndarray) or len(obs) != steps + 1:
            raise ConfigurationError(
                got=f"a Minari episode with observations of type "
                f"{type(episode.observations).__name__}",
                expected="array observations (a Box space), one more than the actions",
                fix="flatten dict observations before converting the dataset",
            )
        action = np.asarray(episode.actions, np.float32).reshape(steps, -1)
        first = np.zeros(steps + 1, bool)
        first[0] = True
        terminal = np.concatenate([[False], np.asarray(episode.terminations, bool)])
        truncated = np.concatenate([[False], np.asarray(episode.truncations, bool)])
        last = terminal | truncated
        last[-1] = True
        infos = episode.infos or {}
        valid = np.asarray(infos.get("physlink_valid", np.ones(steps + 1)), bool)
        extras = {k: np.asarray(v, np.float32).reshape(steps + 1, -1).squeeze(-1)
                  for k, v in infos.items()
                  if k != "physlink_valid" and _is_numeric(v) and len(v) == steps + 1}
        parts.append(Trajectories(
            obs=obs, action=np.concatenate([np.zeros_like(action[:1]), action]),
            reward=np.concatenate([[0.0], np.asarray(episode.rewards, np.float32)]),
            is_first=first, is_terminal=terminal, is_last=last, valid=valid, extras=extras,
            meta={"minari_dataset": str(dataset.spec.dataset_id),
                  **_space_meta(dataset.action_space)},
        ))
    if not parts:
        raise ConfigurationError(got="a Minari dataset without episodes",
                                 expected="at least one episode",
                                 fix="convert a dataset that holds data")
    return Trajectories.concatenate(parts)


def _is_numeric(value: Any) -> bool:
    try:
        return np.asarray(value).dtype.kind in "biuf"
    except (TypeError, ValueError):
        return False


def to_minari(data: Any, dataset_id: str, *, env: Any = None, observation_space: Any = None,
              action_space: Any = None, **metadata: Any) -> Any:
    """Write Trajectories as a local Minari dataset; returns the ``MinariDataset``.

    Each episode is written with its reset observation first, its actions and rewards,
    terminations and truncations; ``valid`` and every extra go to ``infos`` (``valid`` as
    ``physlink_valid``), so :func:`from_minari` reads back the same entries. An episode that
    stops without ``is_last`` (a recording cut) is written as truncated. Pass the ``env`` (id
    or instance) or both spaces; further keyword arguments (``author``, ``algorithm_name``,
    ``description``, ...) go to ``minari.create_dataset_from_buffers``.
    """
    minari = _minari()
    from minari.data_collector import EpisodeBuffer

    buffers = []
    discrete = bool(data.meta.get("discrete"))
    for i, episode in enumerate(data.episodes()):
        steps = len(episode) - 1
        if steps < 1:
            continue
        action = episode.action[1:]
        actions = np.rint(action[:, 0]).astype(np.int64) if discrete else action
        truncations = episode.truncated[1:].copy()
        if not episode.is_last[-1]:
            truncations[-1] = True
        infos = {"physlink_valid": episode.valid.astype(np.bool_)}
        infos.update({k: v for k, v in episode.extras.items()})
        buffers.append(EpisodeBuffer(
            id=i, observations=episode.obs.reshape(steps + 1, *episode.obs.shape[1:]),
            actions=actions, rewards=episode.reward[1:].astype(np.float64).tolist(),
            terminations=episode.is_terminal[1:].tolist(), truncations=truncations.tolist(),
            infos=infos,
        ))
    if env is None and (observation_space is None or action_space is None):
        env_id = data.meta.get("env_id")
        if isinstance(env_id, str) and env_id in gym.registry:  # the recorded env's own spaces
            env = env_id
        else:  # spaces from the data itself
            observation_space = observation_space or gym.spaces.Box(
                -np.inf, np.inf, data.obs.shape[1:], data.obs.dtype)
            action_space = action_space or _action_space_of(data)
    _check_fits(data, observation_space, action_space)
    from minari.storage import get_dataset_path

    folder = get_dataset_path(dataset_id) if isinstance(dataset_id, str) else None
    existed = folder is not None and folder.exists()
    try:
        return minari.create_dataset_from_buffers(
            dataset_id, buffers, env=env, observation_space=observation_space,
            action_space=action_space, **metadata,
        )
    except (ValueError, TypeError, AssertionError, KeyError, OSError) as exc:
        if folder is not None and folder.exists() and not existed:  # leave nothing half-made
            shutil.rmtree(folder, ignore_errors=True)
        raise ValidationError(
            got=f"to_minari({dataset_id!r}) refused by Minari ({type(exc).__name__}: "
            f"{str(exc)[:300]})",
            expected="a new dataset id (namespace/name-v0) and data that fit the spaces",
            fix="check the dataset id (minari.list_local_datasets() lists the taken ones) and "
            "the env or spaces passed; nothing was written",
        ) from None


def _check_fits(data: Any, observation_space: Any, action_space: Any) -> None:
    """Refuse spaces the data's arrays do not fit, before Minari writes anything."""
    pairs = [("observation_space", observation_space, data.obs.shape[1:])]
    if not data.meta.get("discrete"):
        pairs.append(("action_space", action_space, data.action.shape[1:]))
    for name, space, shape in pairs:
        if isinstance(space, gym.spaces.Box) and tuple(space.shape) != tuple(shape):
            raise ValidationError(
                got=f"to_minari({name}={space}) for data of shape {tuple(shape)}",
                expected=f"a space of shape {tuple(shape)}",
                fix=f"pass the {name} the data was recorded with (or the env); nothing was "
                "written",
            )


def _action_space_of(data: Any) -> gym.spaces.Space[Any]:
    """The action space a Trajectories' actions fit: Discrete(n) or an unbounded Box."""
    n = data.meta.get("n_actions")
    if data.meta.get("discrete") and isinstance(n, int) and n > 0:
        return gym.spaces.Discrete(n)
    return gym.spaces.Box(-np.inf, np.inf, data.action.shape[1:], np.float32)
