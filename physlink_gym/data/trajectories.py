"""Trajectories in the Dreamer entry format, their safe npz format, and a recorder.

One entry per observation: entry ``t`` holds ``obs_t``, ``action_t`` (the action that led
*into* ``obs_t``; zeros on ``is_first`` entries), ``reward_t`` (received on arriving at
``obs_t``; 0 on ``is_first``), ``is_first_t``, ``is_terminal_t`` (a true terminal state),
``is_last_t`` (the episode's last entry: terminated, truncated, or recording stopped) and
``valid_t`` (False when :class:`~physlink_gym.InvariantWrapper` flagged the transition that
produced ``obs_t``). Truncation is not termination: ``truncated = is_last & ~is_terminal``, and
the entry then holds the true final observation. Extra per-step floats from ``info`` (e.g.
``cost``) live in ``extras``.

Actions are stored as float vectors ``[N, A]``: a Box action as it was sent to the env, a
Discrete action as its index in a float vector of size 1 (``meta["discrete"]`` is True and
``meta["n_actions"]`` gives ``n``; convert to one-hot where a learner needs it).

Example:
    >>> import gymnasium as gym
    >>> env = gym.make("Pendulum-v1")
    >>> data = record_trajectories(env, n_episodes=2, seed=0)
    >>> data.num_episodes, len(data), data.obs.shape[1], data.action.shape[1]
    (2, 402, 3, 1)
    >>> bool(data.truncated.sum() == 2), bool(data.is_terminal.any())
    (True, False)
    >>> train, held_out = data.split(0.5, seed=0)
    >>> train.num_episodes, held_out.num_episodes
    (1, 1)
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from physlink_gym._files import atomic_write, check_members, check_regular_file, write_npz
from physlink_gym._records import find_record
from physlink_gym._version import __version__
from physlink_gym.errors import (
    CheckpointCorruptError,
    ConfigurationError,
    PhysLinkError,
    ValidationError,
)

__all__ = ["ENTRY_FIELDS", "Trajectories", "record_trajectories"]

#: Per-entry arrays of a :class:`Trajectories`, besides ``extras``.
ENTRY_FIELDS = ("obs", "action", "reward", "is_first", "is_terminal", "is_last", "valid")
_FLOAT_FIELDS = ("obs", "action", "reward")
_FORMAT_VERSION = 1
_EXTRA = "extra."


@dataclass
class Trajectories:
    """One or more episodes as a flat stream of entries (episodes start where ``is_first``).

    Args:
        obs: ``[N, *obs_shape]`` float32.
        action: ``[N, A]`` float32 (a Discrete index is stored as ``[N, 1]``).
        reward: ``[N]`` float32.
        is_first: ``[N]`` bool; True at ``obs[0]`` and every episode start.
        is_terminal: ``[N]`` bool; a true terminal state (not a truncation).
        is_last: ``[N]`` bool; the last entry of an episode.
        valid: ``[N]`` bool; False where the transition into the entry was flagged.
        extras: Name to ``[N, ...]`` float32 arrays (e.g. ``cost``).
        meta: JSON-serialisable description (env id, action type, ...).
    """

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    is_first: np.ndarray
    is_terminal: np.ndarray
    is_last: np.ndarray
    valid: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ENTRY_FIELDS:
            dtype = np.float32 if name in _FLOAT_FIELDS else bool
            setattr(self, name, np.asarray(getattr(self, name)).astype(dtype, copy=False))
        self.extras = {
            k: np.asarray(v).astype(np.float32, copy=False) for k, v in self.extras.items()
        }
        n = self.reward.shape[0] if self.reward.ndim == 1 else -1
        arrays = {**{name: getattr(self, name) for name in ENTRY_FIELDS}, **self.extras}
        bad = [k for k, a in arrays.items() if a.ndim == 0 or a.shape[0] != n]
        if bad or self.action.ndim != 2 or self.obs.ndim < 2:
            key = bad[0] if bad else ("action" if self.action.ndim != 2 else "obs")
            raise ValidationError(
                got=f"{key} with shape {arrays[key].shape} (reward {self.reward.shape})",
                expected="obs [N, ...], action [N, A], reward and flags [N], extras [N, ...]",
                fix="pass arrays with one common leading axis N",
            )
        if n > 0 and not self.is_first[0]:
            raise ValidationError(
                got="a stream whose first entry has is_first=False",
                expected="is_first[0] True (every stream starts an episode)",
                fix="start the data at an episode start",
            )
        if not isinstance(self.meta, dict) or not all(isinstance(k, str) for k in self.meta):
            raise ValidationError(
                got=f"meta={self.meta!r:.80} ({type(self.meta).__name__})",
                expected="a dict with str keys (a file's meta: a JSON object)",
                fix='pass meta={"env_id": ...}; a file with other meta is not a Trajectories file',
            )
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                got=f"meta that JSON cannot encode ({exc})", expected="JSON-serialisable meta",
                fix="store plain str, numbers, lists and dicts in meta",
            ) from exc  # fmt: skip

    # ------------------------------------------------------------------- views
    def __len__(self) -> int:
        """Number of entries (observations), across episodes."""
        return int(self.reward.shape[0])

    @property
    def truncated(self) -> np.ndarray:
        """``[N]`` bool: the episode ended here without a terminal state."""
        truncated: np.ndarray = self.is_last & ~self.is_terminal
        return truncated

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        starts = np.flatnonzero(self.is_first)
        return starts, np.append(starts[1:], len(self))

    @property
    def num_episodes(self) -> int:
        """Number of episodes (complete or not)."""
        return int(self.is_first.sum())

    @property
    def episode_lengths(self) -> np.ndarray:
        """Entries per episode (an episode of ``k`` steps has ``k + 1`` entries)."""
        starts, ends = self._bounds()
        lengths: np.ndarray = ends - starts
        return lengths

    def _take(self, index: np.ndarray | slice) -> Trajectories:
        arrays = {name: getattr(self, name)[index] for name in ENTRY_FIELDS}
        extras = {k: v[index] for k, v in self.extras.items()}
        return Trajectories(**arrays, extras=extras, meta=dict(self.meta))

    def episodes(self) -> Iterator[Trajectories]:
        """Yield each episode as its own :class:`Trajectories` (views, no copies)."""
        for start, end in zip(*self._bounds(), strict=True):
            yield self._take(slice(int(start), int(end)))

    def split(self, fraction: float, seed: int | None = None) -> tuple[Trajectories, Trajectories]:
        """Split by whole episodes into ``(first, rest)``, e.g. ``train, held_out``.

        Args:
            fraction: Share of episodes in the first part, in (0, 1); rounded, and clamped so
                that both parts hold at least one episode.
            seed: Seed of the random episode assignment (episode order is kept in each part).

        Raises:
            ValidationError: Fewer than two episodes, or ``fraction`` outside (0, 1).
        """
        count = self.num_episodes
        if not 0.0 < fraction < 1.0 or count < 2:
            raise ValidationError(
                got=f"split(fraction={fraction!r}) of {count} episode(s)",
                expected="0 < fraction < 1 and at least 2 episodes",
                fix="record more episodes or pass a fraction such as 0.8",
            )
        first = min(max(round(fraction * count), 1), count - 1)
        chosen = np.zeros(count, bool)
        chosen[np.random.default_rng(seed).permutation(count)[:first]] = True
        episode_of_entry = np.cumsum(self.is_first) - 1
        mask = chosen[episode_of_entry]
        return self._take(np.flatnonzero(mask)), self._take(np.flatnonzero(~mask))

    @classmethod
    def concatenate(cls, parts: Sequence[Trajectories]) -> Trajectories:
        """Join several containers (same extras) into one; ``meta`` comes from the first."""
        if not parts or any(set(p.extras) != set(parts[0].extras) for p in parts):
            raise ValidationError(
                got=f"{len(parts)} part(s) with extras {[sorted(p.extras) for p in parts]}",
                expected="at least one Trajectories, all with the same extras",
                fix="drop or add the differing extras before concatenating",
            )
        arrays = {n: np.concatenate([getattr(p, n) for p in parts]) for n in ENTRY_FIELDS}
        extras = {k: np.concatenate([p.extras[k] for p in parts]) for k in parts[0].extras}
        return cls(**arrays, extras=extras, meta=dict(parts[0].meta))

    def as_dict(self) -> dict[str, np.ndarray]:
        """Entry arrays for :meth:`SequenceReplay.add_entries` (obs flattened to ``[N, D]``)."""
        arrays = {name: getattr(self, name) for name in ENTRY_FIELDS}
        arrays["obs"] = self.obs.reshape(len(self), -1)
        return arrays

    # -------------------------------------------------------------- conversions
    @classmethod
    def from_list(cls, steps: Sequence[Any], **kwargs: Any) -> Trajectories:
        """From a list of per-step dicts; see :func:`physlink_gym.data.convert.from_list`."""
        from physlink_gym.data.convert import from_list

        result: Trajectories = from_list(steps, **kwargs)
        return result

    @classmethod
    def from_minari(cls, dataset: Any) -> Trajectories:
        """From a Minari dataset; see :func:`physlink_gym.data.convert.from_minari`."""
        from physlink_gym.data.convert import from_minari

        result: Trajectories = from_minari(dataset)
        return result

    def to_minari(self, dataset_id: str, **kwargs: Any) -> Any:
        """As a local Minari dataset; see :func:`physlink_gym.data.convert.to_minari`."""
        from physlink_gym.data.convert import to_minari

        return to_minari(self, dataset_id, **kwargs)

    # ------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write an uncompressed npz atomically at exactly ``path`` (no pickle inside).

        Members: the entry fields, ``extra.<name>`` per extra, ``meta`` (JSON in a 0-d unicode
        array), ``format_version`` and ``physlink_gym_version``.
        """
        arrays: dict[str, np.ndarray] = {name: getattr(self, name) for name in ENTRY_FIELDS}
        arrays.update({_EXTRA + k: v for k, v in self.extras.items()})
        arrays["meta"] = np.array(json.dumps(self.meta))
        arrays["format_version"] = np.array(_FORMAT_VERSION)
        arrays["physlink_gym_version"] = np.array(__version__)
        return atomic_write(path, lambda handle: write_npz(handle, arrays))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trajectories:
        """Read a file written by :meth:`save` with ``allow_pickle=False``.

        Raises:
            CheckpointCorruptError: The file is missing, not a regular file, not such an npz
                (encrypted, compressed or oversized members included), or inconsistent.
        """
        size = check_regular_file(path)
        try:
            with zipfile.ZipFile(path) as archive:
                check_members(path, archive, size, {"meta.npy": 64 * 1024**2})
            with np.load(path, allow_pickle=False) as data:
                if int(data["format_version"]) != _FORMAT_VERSION:
                    raise ValueError(f"format_version {data['format_version']}")
                arrays = {name: data[name] for name in ENTRY_FIELDS}
                extras = {k[len(_EXTRA) :]: data[k] for k in data.files if k.startswith(_EXTRA)}
                meta = json.loads(str(data["meta"]))
            return cls(**arrays, extras=extras, meta=meta)
        except (OSError, zipfile.BadZipFile, EOFError, ValueError, KeyError, TypeError,
                RecursionError, MemoryError, RuntimeError, PhysLinkError) as exc:
            if isinstance(exc, CheckpointCorruptError):
                raise
            raise CheckpointCorruptError(
                got=f"trajectory file {os.fspath(path)!r} that cannot be read ({exc})",
                expected="an npz file written by Trajectories.save",
                fix="check the path, or record the trajectories again",
            ) from exc


# ------------------------------------------------------------------------- recording
def _actor(env: Any, policy: Any, deterministic: bool, seed: int | None) -> Callable[..., Any]:
    """``act(obs, episode_start) -> env action`` for a random, SB3-style or callable policy."""
    if policy is None:
        env.action_space.seed(seed)
        return lambda obs, start: env.action_space.sample()
    if hasattr(policy, "predict"):
        state: Any = None

        def predict(obs: Any, start: bool) -> Any:
            nonlocal state  # the recurrent state is carried across steps
            action, state = policy.predict(
                obs, state=state, episode_start=np.array([start]), deterministic=deterministic
            )
            return action

        return predict
    if callable(policy):
        return lambda obs, start: policy(obs)
    raise ConfigurationError(
        got=f"policy of type {type(policy).__name__}",
        expected="None (random), a model with .predict(obs, state, episode_start, deterministic) "
        "or a callable obs -> action",
        fix="pass an SB3 / DreamerV3 model, a function, or None",
    )


class _Buffer:
    """Per-entry lists, stacked once at the end."""

    def __init__(self, info_keys: Sequence[str],
                 state: Callable[[], dict[str, np.ndarray]] | None = None) -> None:
        self.rows: dict[str, list[Any]] = {name: [] for name in ENTRY_FIELDS}
        self.info_keys = tuple(info_keys)
        self.extras: dict[str, dict[int, Any]] = {}
        self.state = state

    def add(self, obs: Any, action: np.ndarray, reward: float, info: dict[str, Any],
            first: bool = False, terminal: bool = False, last: bool = False) -> None:  # fmt: skip
        record = find_record(info)  # the wrapper's record, whatever its info_key
        valid = record.get("valid", True) if record is not None else True
        index = len(self.rows["obs"])
        flat_obs = np.atleast_1d(np.asarray(obs, np.float32))
        values = (flat_obs, action, reward, first, terminal, last, bool(valid))
        for name, value in zip(ENTRY_FIELDS, values, strict=True):
            self.rows[name].append(value)
        for key in self.info_keys:
            if key in info:
                self.extras.setdefault(key, {})[index] = np.asarray(info[key], np.float32)
        if self.state is not None:
            for key, value in self.state().items():
                self.extras.setdefault(key, {})[index] = value

    def build(self, meta: dict[str, Any]) -> Trajectories:
        n = len(self.rows["obs"])
        extras = {}
        for key, found in self.extras.items():
            column = np.zeros((n, *next(iter(found.values())).shape), np.float32)
            for index, value in found.items():
                column[index] = value
            extras[key] = column
        arrays = {name: np.stack(values) for name, values in self.rows.items()}
        return Trajectories(**arrays, extras=extras, meta=meta)


def _sim_state_reader(env: Any) -> Callable[[], dict[str, np.ndarray]]:
    data = getattr(env.unwrapped, "data", None)
    if not all(hasattr(data, k) for k in ("qpos", "qvel")):
        raise ConfigurationError(
            got=f"sim_state=True for {type(env.unwrapped).__name__}, which has no MuJoCo data",
            expected="a MuJoCo-based env (env.unwrapped.data with qpos and qvel)",
            fix="pass sim_state=False for this env",
        )  # fmt: skip

    def read() -> dict[str, np.ndarray]:
        live = env.unwrapped.data  # looked up each time: an env may replace its MjData
        return {"qpos": np.array(live.qpos, np.float32), "qvel": np.array(live.qvel, np.float32)}

    return read


def _dt_of(env: Any) -> float | None:
    """Seconds per env step (``env.unwrapped.dt``), None when unknown or not finite."""
    try:
        dt = float(getattr(env.unwrapped, "dt", float("nan")))
    except (TypeError, ValueError):
        return None
    return dt if np.isfinite(dt) else None


def _describe(env: Any, discrete: bool) -> dict[str, Any]:
    space = env.action_space
    spec = getattr(env, "spec", None)
    return {
        "env_id": getattr(spec, "id", None), "discrete": discrete,
        "n_actions": int(space.n) if discrete and hasattr(space, "n") else None,
        "action_shape": [int(d) for d in (getattr(space, "shape", None) or ())],
        "dt": _dt_of(env),
        "physlink_gym_version": __version__,
    }  # fmt: skip


def record_trajectories(
    env: Any,
    policy: Any = None,
    *,
    n_steps: int | None = None,
    n_episodes: int | None = None,
    deterministic: bool = False,
    seed: int | None = None,
    discrete: bool | None = None,
    info_keys: Sequence[str] = ("cost",),
    sim_state: bool = False,
) -> Trajectories:
    """Collect entries from one gymnasium env, keeping the invariant flags.

    Args:
        env: A single (not vectorised) gymnasium env.
        policy: ``None`` (uniform random actions), a model with SB3's
            ``predict(obs, state, episode_start, deterministic)`` (the recurrent state is
            carried, e.g. DreamerV3), or a callable ``obs -> action``.
        n_steps: Stop after this many env steps.
        n_episodes: Stop after this many finished episodes (whichever limit comes first).
        deterministic: Passed to ``predict``.
        seed: Seeds the first ``reset`` and, for random actions, the action space.
        discrete: Store actions as a Discrete index (float ``[1]``); inferred when None.
        info_keys: Per-step ``info`` keys kept as float extras (0 where absent).
        sim_state: Also keep a MuJoCo env's ``qpos`` and ``qvel`` after every reset and step
            as the extras ``"qpos"`` and ``"qvel"``, so :func:`physlink_gym.audit` can replay
            the state-based MuJoCo invariants offline.

    Returns:
        The entries; ``valid`` is ``info["physlink"]["valid"]`` (True when absent); a
        truncated episode ends with its true final observation; stopping mid-episode marks the
        last entry ``is_last`` without ``is_terminal``.
    """
    if n_steps is None and n_episodes is None:
        raise ConfigurationError(
            got="n_steps=None and n_episodes=None", expected="at least one limit",
            fix="pass n_steps=1000 or n_episodes=10",
        )  # fmt: skip
    from gymnasium import spaces

    discrete = isinstance(env.action_space, spaces.Discrete) if discrete is None else discrete
    act = _actor(env, policy, deterministic, seed)
    buffer = _Buffer(info_keys, _sim_state_reader(env) if sim_state else None)
    obs, info = env.reset(seed=seed)
    # A Dict observation is stored as its keys side by side, in the space's order (that of
    # gymnasium's flatten, and of DreamerV3's MultiInputPolicy); the policy gets the dict.
    space = env.observation_space
    flat = ((lambda o: spaces.flatten(space, o)) if isinstance(space, spaces.Dict)
            else (lambda o: o))
    action_dim = 1 if discrete else int(np.prod(env.action_space.shape))
    buffer.add(flat(obs), np.zeros(action_dim, np.float32), 0.0, info, first=True)
    steps = episodes = 0
    start = True
    while True:
        action = act(obs, start)
        stored = np.asarray(action, np.float32).reshape(-1)
        if discrete:
            action = int(np.asarray(action).item())
            stored = np.array([action], np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        steps, start = steps + 1, False
        done = bool(terminated or truncated)
        episodes += done
        stop = steps == n_steps or episodes == n_episodes
        buffer.add(flat(obs), stored, float(reward), info, terminal=bool(terminated),
                   last=done or stop)
        if stop:
            return buffer.build(_describe(env, discrete))
        if done:
            obs, info = env.reset()
            buffer.add(flat(obs), np.zeros(action_dim, np.float32), 0.0, info, first=True)
            start = True
