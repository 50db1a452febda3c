"""Sequence replay on preallocated numpy ring buffers, sampled as ``[B, T]`` windows.

Data convention (the Dreamer "entry" format): one entry per observation. Entry ``t`` holds
``obs_t``, ``action_t`` (the action that led *into* ``obs_t``; zeros when ``is_first``),
``reward_t`` (received on arriving at ``obs_t``; 0 when ``is_first``), ``is_first_t``,
``is_terminal_t`` (``obs_t`` is a true terminal state; truncation is not termination) and
``valid_t`` (False when :class:`~physlink_gym.InvariantWrapper` flagged the transition that
produced ``obs_t``).

Each env has its own ring of ``capacity // n_envs`` entries. A sample is ``batch_size`` windows
of ``length`` consecutive entries of one env's stream, drawn uniformly over every start position
whose window lies inside the filled part of a ring (so a window never crosses the write head).
Windows may cross episode boundaries; ``is_first`` marks them.

Samples are *sanitised* for the learner: where ``valid`` is False, obs, action and reward are
zeroed (a NaN in a flagged entry cannot reach a loss, even multiplied by 0), ``is_terminal`` is
False and ``is_first`` is True; the entry after an invalid one also gets ``is_first`` (the stream
is cut there, so flagged transitions never feed the recurrent state). Whether each window starts
from the initial state is the learner's choice (``DreamerV3Config.reset_window_start``).
Entries whose obs, action or reward are not finite are stored as invalid.

Example:
    >>> import numpy as np
    >>> rb = SequenceReplay(capacity=100, n_envs=2, obs_dim=3, action_dim=1, seed=0)
    >>> for t in range(10):
    ...     rb.add(np.full((2, 3), t), np.zeros((2, 1)), np.ones(2), np.full(2, t == 0),
    ...            np.zeros(2, bool), np.ones(2, bool))
    >>> len(rb), rb.can_sample(8), rb.nbytes_per_step
    (20, True, 23)
    >>> batch = rb.sample(4, 8)
    >>> batch["obs"].shape, batch["valid"].all()
    ((4, 8, 3), np.True_)
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from physlink_gym._files import atomic_write, check_members, check_regular_file, write_npz
from physlink_gym._version import __version__
from physlink_gym.errors import (
    CheckpointCorruptError,
    ConfigurationError,
    ValidationError,
    check_int,
)

__all__ = ["FIELDS", "SequenceReplay"]

#: Per-entry fields, in storage order.
FIELDS = ("obs", "action", "reward", "is_first", "is_terminal", "valid")
_FORMAT_VERSION = 1
_CHUNK = 16 * 1024**2
_SMALL = ("config", "format_version", "pos", "count", "rng_state", "physlink_gym_version")


class SequenceReplay:
    """Ring-buffer replay of entry streams, one ring per env, sampled as ``[B, T]`` windows.

    Args:
        capacity: Total entries kept across all envs; each env keeps ``capacity // n_envs``.
        n_envs: Number of parallel env streams written by :meth:`add`.
        obs_dim: Size of a flat observation.
        action_dim: Size of a flat action.
        seed: Seed of the sampling generator (``numpy.random.PCG64``).
    """

    def __init__(
        self, capacity: int, n_envs: int, obs_dim: int, action_dim: int, seed: int | None = None
    ) -> None:
        self.capacity = check_int("capacity", capacity, minimum=1)
        self.n_envs = check_int("n_envs", n_envs, minimum=1)
        self.obs_dim = check_int("obs_dim", obs_dim, minimum=1)
        self.action_dim = check_int("action_dim", action_dim, minimum=1)
        self.per_env = self.capacity // self.n_envs
        if self.per_env < 1:
            raise ConfigurationError(
                got=f"capacity={capacity} for n_envs={n_envs}",
                expected="capacity >= n_envs (each env needs its own ring)",
                fix=f"pass capacity >= {n_envs}",
            )
        shape = (self.n_envs, self.per_env)
        # np.zeros maps pages lazily: untouched capacity costs no resident memory.
        self.obs = np.zeros((*shape, self.obs_dim), np.float32)
        self.action = np.zeros((*shape, self.action_dim), np.float32)
        self.reward = np.zeros(shape, np.float32)
        self.is_first = np.zeros(shape, bool)
        self.is_terminal = np.zeros(shape, bool)
        self.valid = np.zeros(shape, bool)
        self._pos = np.zeros(self.n_envs, np.int64)  # next write index per env
        self._count = np.zeros(self.n_envs, np.int64)  # filled entries per env
        self._rng = np.random.Generator(np.random.PCG64(seed))

    # ------------------------------------------------------------------ writing
    def _validated(self, name: str, value: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        array = np.asarray(value)
        if array.shape != shape:
            raise ValidationError(
                got=f"{name} with shape {array.shape}",
                expected=f"shape {shape} (obs_dim={self.obs_dim}, action_dim={self.action_dim})",
                fix=f"pass {name} as an array of shape {shape}; for Discrete actions pass the "
                "one-hot or index vector the buffer was built for",
            )
        return array.astype(dtype, copy=False)

    def _write(self, env: Any, index: Any, lead: tuple[int, ...], fields: dict[str, Any]) -> None:
        obs = self._validated("obs", fields["obs"], (*lead, self.obs_dim), np.float32)
        action = self._validated("action", fields["action"], (*lead, self.action_dim), np.float32)
        reward = self._validated("reward", fields["reward"], lead, np.float32)
        valid = self._validated("valid", fields["valid"], lead, bool)
        finite = np.isfinite(obs).all(-1) & np.isfinite(action).all(-1) & np.isfinite(reward)
        self.obs[env, index] = obs
        self.action[env, index] = action
        self.reward[env, index] = reward
        self.is_first[env, index] = self._validated("is_first", fields["is_first"], lead, bool)
        self.is_terminal[env, index] = self._validated(
            "is_terminal", fields["is_terminal"], lead, bool
        )
        self.valid[env, index] = valid & finite

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        is_first: np.ndarray,
        is_terminal: np.ndarray,
        valid: np.ndarray,
    ) -> None:
        """Append one entry per env (arrays with a leading ``n_envs`` axis).

        Raises:
            ValidationError: A shape does not match ``[n_envs, ...]``.
        """
        fields = {
            "obs": obs, "action": action, "reward": reward,
            "is_first": is_first, "is_terminal": is_terminal, "valid": valid,
        }  # fmt: skip
        if (self._pos == self._pos[0]).all():  # the usual case: plain slicing is fastest
            self._write(slice(None), int(self._pos[0]), (self.n_envs,), fields)
        else:  # streams were bulk-loaded to different lengths
            self._write(np.arange(self.n_envs), self._pos.copy(), (self.n_envs,), fields)
        self._pos = (self._pos + 1) % self.per_env
        self._count = np.minimum(self._count + 1, self.per_env)

    def add_entries(self, entries: Mapping[str, np.ndarray], env_index: int = 0) -> None:
        """Append a stream of ``N`` entries to one env's ring (bulk load of trajectories).

        Args:
            entries: Arrays ``obs [N, obs_dim]``, ``action [N, action_dim]``, ``reward [N]``,
                ``is_first [N]``, ``is_terminal [N]`` and optionally ``valid [N]`` (default all
                True); other keys (``is_last``, extras) are ignored. When ``N`` exceeds the
                ring, only the last ``per_env`` entries are kept.
            env_index: Which env stream receives them.

        Raises:
            ValidationError: A key is missing, a shape is wrong or ``env_index`` is out of range.
        """
        missing = [key for key in FIELDS[:-1] if key not in entries]
        if missing:
            raise ValidationError(
                got=f"entries without {missing}", expected=f"the keys {list(FIELDS)}",
                fix="pass a dict with every entry field (valid may be omitted)",
            )  # fmt: skip
        env = check_int("env_index", env_index, minimum=0)
        if env >= self.n_envs:
            raise ValidationError(
                got=f"env_index={env_index}", expected=f"0 <= env_index < {self.n_envs}",
                fix="pass the index of an existing env stream",
            )  # fmt: skip
        arrays = {key: np.asarray(entries[key]) for key in FIELDS if key in entries}
        n = arrays["reward"].shape[0] if arrays["reward"].ndim == 1 else -1
        arrays.setdefault("valid", np.ones(max(n, 0), bool))
        bad = [key for key, a in arrays.items() if n < 0 or a.ndim == 0 or a.shape[0] != n]
        if bad:
            raise ValidationError(
                got=f"{bad[0]} with shape {arrays[bad[0]].shape} (reward {arrays['reward'].shape})",
                expected="arrays of one stream with a common leading axis N, reward shaped [N]",
                fix="pass obs [N, obs_dim], action [N, action_dim] and [N] flags",
            )
        keep = min(n, self.per_env)
        fields = {key: a[n - keep :] for key, a in arrays.items()}
        index = (self._pos[env] + np.arange(keep)) % self.per_env
        self._write(env, index, (keep,), fields)
        self._pos[env] = (self._pos[env] + keep) % self.per_env
        self._count[env] = min(int(self._count[env]) + keep, self.per_env)

    # ----------------------------------------------------------------- sampling
    def __len__(self) -> int:
        """Entries stored across all envs."""
        return int(self._count.sum())

    @property
    def nbytes_per_step(self) -> int:
        """Bytes one entry occupies (``4 * (obs_dim + action_dim + 1) + 3``)."""
        return 4 * (self.obs_dim + self.action_dim + 1) + 3

    def can_sample(self, length: int) -> bool:
        """Whether some env stream holds at least ``length`` consecutive entries."""
        return length >= 1 and bool((self._count >= length).any())

    def sample(self, batch_size: int, length: int, rng: np.random.Generator | None = None,
               ) -> dict[str, np.ndarray]:
        """Draw ``batch_size`` windows of ``length`` consecutive entries, sanitised.

        ``rng`` draws the windows instead of the replay's own generator (whose state the
        checkpoint keeps), e.g. for diagnostics that must not change the training stream.

        Returns:
            ``obs [B, T, obs_dim]``, ``action [B, T, action_dim]``, ``reward [B, T]`` (float32)
            and ``is_first``, ``is_terminal``, ``valid`` ``[B, T]`` (bool).

        Raises:
            ValidationError: No env stream holds ``length`` entries yet.
        """
        batch_size = check_int("batch_size", batch_size, minimum=1)
        length = check_int("length", length, minimum=1)
        if not self.can_sample(length):
            raise ValidationError(
                got=f"a request for windows of length {length} with at most "
                f"{int(self._count.max())} entries per env stream",
                expected=f"at least {length} entries in one env stream",
                fix="add more entries first (check can_sample(length)) or sample shorter windows",
            )
        windows = np.maximum(self._count - length + 1, 0)
        ends = np.cumsum(windows)
        draw = (rng or self._rng).integers(0, ends[-1], size=batch_size)
        env = np.searchsorted(ends, draw, side="right")
        oldest = (self._pos[env] - self._count[env]) % self.per_env
        start = oldest + draw - (ends[env] - windows[env])
        index = (start[:, None] + np.arange(length)) % self.per_env
        flat = (env[:, None] * self.per_env + index).ravel()  # np.take on 1-D indices: ~3x faster
        batch = {}
        for key in FIELDS:
            array = getattr(self, key)
            rest = array.shape[2:]
            rows = np.take(array.reshape(-1, *rest), flat, axis=0)
            batch[key] = rows.reshape(batch_size, length, *rest)
        return _sanitise(batch)

    # -------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to resume, as arrays (views of the filled part, not copies).

        Field arrays are ``[n_envs, m, ...]`` where ``m`` is the largest fill count: rings fill
        from index 0, so this is exactly the written part (the whole ring once one wraps).
        ``rng_state`` is the generator state as JSON in a 0-d unicode array.
        """
        filled = int(self._count.max())
        state = {key: getattr(self, key)[:, :filled] for key in FIELDS}
        state["pos"] = self._pos.copy()
        state["count"] = self._count.copy()
        state["config"] = np.array(
            [self.capacity, self.n_envs, self.obs_dim, self.action_dim], np.int64
        )
        state["format_version"] = np.array(_FORMAT_VERSION, np.int64)
        state["physlink_gym_version"] = np.array(__version__)
        state["rng_state"] = np.array(json.dumps(self._rng.bit_generator.state))
        return state

    def _check_config(self, config: np.ndarray) -> None:
        ours = [self.capacity, self.n_envs, self.obs_dim, self.action_dim]
        if np.shape(config) != (4,) or [int(v) for v in config] != ours:
            raise ValidationError(
                got=f"a replay state with (capacity, n_envs, obs_dim, action_dim)={config!r}",
                expected=f"{tuple(ours)}",
                fix="build the buffer with the saved configuration, or use SequenceReplay.load",
            )

    def _set_counters(self, pos: Any, count: Any, rng_state: Any) -> None:
        pos, count = np.asarray(pos, np.int64), np.asarray(count, np.int64)
        ok = pos.shape == count.shape == (self.n_envs,)
        ok = ok and bool(((count >= 0) & (count <= self.per_env)).all())
        ok = ok and bool(((pos >= 0) & (pos < self.per_env)).all())
        if not ok:
            raise CheckpointCorruptError(
                got=f"replay counters pos={pos!r} count={count!r}",
                expected=f"{self.n_envs} positions in [0, {self.per_env})",
                fix="the replay file is damaged; use an earlier copy",
            )
        self._pos, self._count = pos.copy(), count.copy()
        self._rng.bit_generator.state = json.loads(str(rng_state))

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore from :meth:`state_dict`; the next samples equal the original's.

        Raises:
            ValidationError: The state comes from a buffer of another configuration.
        """
        self._check_config(np.asarray(state["config"]))
        filled = int(np.asarray(state["count"]).max(initial=0))
        for key in FIELDS:
            target = getattr(self, key)
            source = np.asarray(state[key])
            if source.shape != (self.n_envs, filled, *target.shape[2:]):
                raise ValidationError(
                    got=f"{key} with shape {source.shape}",
                    expected=f"shape {(self.n_envs, filled, *target.shape[2:])}",
                    fix="pass a dict produced by SequenceReplay.state_dict",
                )
            target[:, :filled] = source
            target[:, filled:] = 0
        self._set_counters(state["pos"], state["count"], state["rng_state"])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`state_dict` as an uncompressed ``.npz``, atomically, at exactly ``path``.

        Only the filled part of the rings is written, streamed in chunks (no second copy in
        memory). Any suffix is accepted (SB3's ``CheckpointCallback`` passes ``.pkl``); the bytes
        are always npz, readable with ``numpy.load(path, allow_pickle=False)``.
        """
        return atomic_write(path, lambda handle: write_npz(handle, self.state_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SequenceReplay:
        """Read a buffer written by :meth:`save`, streaming it into freshly allocated rings.

        Raises:
            CheckpointCorruptError: The file is missing, not a regular file, not an npz, holds
                encrypted, compressed or oversized members, is inconsistent, or has entries
                marked valid whose values are not finite.
        """
        size = check_regular_file(path)
        try:
            with zipfile.ZipFile(path) as archive:
                check_members(path, archive, size, {f"{k}.npy": 1 << 16 for k in _SMALL})
                return cls._from_archive(archive)
        except (OSError, zipfile.BadZipFile, EOFError, ValueError, TypeError, KeyError,
                MemoryError, OverflowError, RuntimeError, ConfigurationError) as exc:
            raise CheckpointCorruptError(
                got=f"replay file {os.fspath(path)!r} that cannot be read ({exc})",
                expected="an npz file written by SequenceReplay.save",
                fix="check the path, or use an earlier copy of the replay buffer",
            ) from exc

    @classmethod
    def _from_archive(cls, archive: zipfile.ZipFile) -> SequenceReplay:
        def small(name: str) -> np.ndarray:
            with archive.open(f"{name}.npy") as member:
                return np.lib.format.read_array(member, allow_pickle=False)

        config = small("config")
        if config.shape != (4,) or int(small("format_version")) != _FORMAT_VERSION:
            raise ValueError(f"unknown layout (config {config!r})")
        capacity, n_envs, obs_dim, action_dim = (int(v) for v in config)
        buffer = cls(capacity, n_envs, obs_dim, action_dim)
        count = small("count")
        filled = int(count.max(initial=0))
        for key in FIELDS:
            with archive.open(f"{key}.npy") as member:
                assert isinstance(member, io.BufferedIOBase)  # a ZipExtFile
                _read_into(member, getattr(buffer, key)[:, :filled])
        buffer._set_counters(small("pos"), count, small("rng_state"))
        finite = (np.isfinite(buffer.obs[:, :filled]).all(-1)
                  & np.isfinite(buffer.action[:, :filled]).all(-1)
                  & np.isfinite(buffer.reward[:, :filled]))
        if (buffer.valid[:, :filled] & ~finite).any():
            raise ValueError("entries marked valid hold non-finite values (the replay stores "
                             "those as invalid: the file was altered)")
        return buffer


def _read_into(member: io.BufferedIOBase, dest: np.ndarray) -> None:
    """Stream one ``.npy`` member into ``dest`` (``[n_envs, m, ...]``) in 16 MiB chunks."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    if fortran or dtype != dest.dtype or tuple(shape) != dest.shape:
        raise ValueError(f"member has shape {shape} {dtype} but {dest.shape} {dest.dtype} needed")
    for row in dest:  # each env's filled part is contiguous in the ring
        view = memoryview(row).cast("B")
        for begin in range(0, view.nbytes, _CHUNK):
            chunk = view[begin : begin + _CHUNK]
            if member.readinto(chunk) != chunk.nbytes:
                raise EOFError("replay member ended early")


def _sanitise(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Zero flagged entries and cut the stream at and after them (in place on the copies)."""
    invalid = ~batch["valid"]
    batch["obs"][invalid] = 0.0
    batch["action"][invalid] = 0.0
    batch["reward"][invalid] = 0.0
    batch["is_terminal"] &= batch["valid"]
    first = batch["is_first"]
    first |= invalid
    first[:, 1:] |= invalid[:, :-1]
    return batch
