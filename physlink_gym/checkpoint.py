"""Safe checkpoints: safetensors + JSON in one zip, atomic writes, never a pickle.

A checkpoint is one uncompressed zip (``ZIP_STORED``) with exactly two members:

* ``metadata.json``: a JSON object; :func:`save_checkpoint` adds ``physlink_gym_version`` and
  ``format_version``;
* ``tensors.safetensors``: the tensors (safetensors holds raw bytes plus a JSON header).

:func:`load_checkpoint` reads JSON and safetensors only, so opening a file never runs code from
it; anything else (an SB3 zip with ``data`` / ``policy.pth``, a stray pickle, an extra member) is a
:class:`~physlink_gym.errors.CheckpointCorruptError`. Another ``major.minor`` version is a
:class:`~physlink_gym.errors.CheckpointVersionError`.

Every file physlink_gym writes goes through :func:`atomic_write`: the bytes go to a temporary
file in the destination's directory, are flushed and fsynced, and only then renamed over the
destination (``os.replace``), so a crash mid-write leaves the previous file intact.
:func:`flatten_state` / :func:`unflatten_state` turn nested states (e.g. an optimizer's
``state_dict`` with int keys) into tensors plus a JSON skeleton and back, exactly.

Example:
    >>> import tempfile, pathlib, torch
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.zip"
    >>> _ = save_checkpoint(path, {"w": torch.ones(2)}, {"step": 3})
    >>> tensors, meta = load_checkpoint(path)
    >>> tensors["w"].tolist(), meta["step"], meta["format_version"]
    ([1.0, 1.0], 3, 1)
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import safetensors.torch
import torch

from physlink_gym._files import (
    atomic_write,
    check_members,
    check_regular_file,
    corrupt,
    write_npz,
)
from physlink_gym._version import __version__
from physlink_gym.errors import (
    CheckpointCorruptError,
    CheckpointVersionError,
    ValidationError,
)

__all__ = [
    "FORMAT_VERSION",
    "MEMBERS",
    "atomic_write",
    "check_members",
    "check_regular_file",
    "flatten_state",
    "load_checkpoint",
    "save_checkpoint",
    "unflatten_state",
    "write_npz",
]

#: Layout version of the checkpoint zip; bumped when the members' meaning changes.
FORMAT_VERSION = 1
METADATA = "metadata.json"
TENSORS = "tensors.safetensors"
#: The exact member names of a checkpoint zip.
MEMBERS = (METADATA, TENSORS)


# --------------------------------------------------------------------------- checkpoints
def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors that share no memory (safetensors requires it)."""
    prepared: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ValidationError(
                got=f"tensors entry {name!r}: {type(tensor).__name__}",
                expected="a dict of str names to torch.Tensor",
                fix="pass tensors through flatten_state first",
            )
        value = tensor.detach().to("cpu").contiguous()
        storage = value.untyped_storage().data_ptr() if value.numel() else -1
        if storage in seen:
            value = value.clone()
        elif storage != -1:
            seen.add(storage)
        prepared[name] = value
    return prepared


def save_checkpoint(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]
) -> Path:
    """Write tensors and JSON metadata as one checkpoint zip, atomically.

    Args:
        path: Destination, used exactly as given (callers add a suffix if they want one).
        tensors: Name to tensor; moved to CPU, made contiguous, de-aliased.
        metadata: A JSON-serialisable mapping; ``physlink_gym_version`` and ``format_version``
            are added (overwriting keys of those names).

    Returns:
        The destination path.

    Raises:
        ValidationError: ``metadata`` is not JSON-serialisable or ``tensors`` holds a non-tensor.
    """
    meta = {**metadata, "physlink_gym_version": __version__, "format_version": FORMAT_VERSION}
    try:
        meta_bytes = json.dumps(meta).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            got=f"checkpoint metadata that JSON cannot encode ({exc})",
            expected="dicts, lists, str, int, float, bool and None only",
            fix="convert arrays and tensors with flatten_state, other objects to str",
        ) from exc
    tensor_bytes = safetensors.torch.save(_prepare_tensors(tensors))

    def write(handle: BinaryIO) -> None:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.writestr(METADATA, meta_bytes)
            zf.writestr(TENSORS, tensor_bytes)

    return atomic_write(path, write)


_CHECKPOINT = f"a physlink_gym checkpoint: a zip holding exactly {list(MEMBERS)}"


def _corrupt(path: str | os.PathLike[str], problem: str, fix: str = "") -> CheckpointCorruptError:
    return corrupt(path, problem, fix, _CHECKPOINT)


#: Largest metadata member read (JSON); tensors are bounded by the file's own size.
MAX_METADATA_BYTES = 64 * 1024**2


def _read_members(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """Both members' bytes; refuses anything but the exact two-member layout."""
    size = check_regular_file(path)
    try:
        with zipfile.ZipFile(path) as archive:
            check_members(path, archive, size, {METADATA: MAX_METADATA_BYTES})
            names = archive.namelist()
            if sorted(names) != sorted(MEMBERS):
                extra = sorted(set(names) - set(MEMBERS))
                sb3 = {"data", "policy.pth"} & set(names)
                raise _corrupt(
                    path,
                    f"a zip with members {sorted(names)} (unexpected: {extra})",
                    "this looks like a Stable-Baselines3 zip, which holds pickles: it is never "
                    "loaded here; load it with stable_baselines3 only if you trust its source"
                    if sb3
                    else "",
                )
            return archive.read(METADATA), archive.read(TENSORS)
    except FileNotFoundError as exc:
        raise _corrupt(path, "no such file", "check the path") from exc
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, NotImplementedError,
            RuntimeError, zipfile.LargeZipFile) as exc:
        raise _corrupt(path, f"not a readable zip ({type(exc).__name__}: {exc})") from exc


def _check_version(path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    version = meta.get("physlink_gym_version")
    if not isinstance(version, str) or not isinstance(meta.get("format_version"), int):
        raise _corrupt(path, "metadata without physlink_gym_version / format_version")
    if version.split(".")[:2] != __version__.split(".")[:2]:
        raise CheckpointVersionError(version, __version__)
    if meta["format_version"] != FORMAT_VERSION:
        raise _corrupt(
            path, f"format_version {meta['format_version']} (this reads {FORMAT_VERSION})"
        )


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; never unpickles anything.

    Args:
        path: The checkpoint zip.
        device: Where the tensors go.

    Returns:
        ``(tensors, metadata)``.

    Raises:
        CheckpointCorruptError: Missing, empty, truncated or garbage file; other members than
            ``metadata.json`` and ``tensors.safetensors`` (e.g. an SB3 zip); bad JSON or
            safetensors.
        CheckpointVersionError: The file's ``major.minor`` differs from this version's.
    """
    meta_bytes, tensor_bytes = _read_members(path)
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _corrupt(path, f"metadata.json is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise _corrupt(path, f"metadata.json holds a {type(meta).__name__}, not an object")
    _check_version(path, meta)
    try:
        tensors = safetensors.torch.load(tensor_bytes)
    except Exception as exc:  # safetensors raises its own error types (and OSError, ValueError)
        raise _corrupt(path, f"tensors.safetensors is unreadable ({exc})") from exc
    return {name: t.to(device) for name, t in tensors.items()}, meta


# --------------------------------------------------------------------- nested states
_TAGS = ("__tensor__", "__ndarray__", "__dict__", "__tuple__")


def flatten_state(tree: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state into safetensors-able tensors and a JSON-able skeleton.

    Supports dicts (keys str, int, float, bool or None; order kept), lists, tuples, tensors,
    numpy arrays and scalars, and Python numbers, strings, bools and None. In the skeleton,
    lists stay lists and everything else that is not a JSON scalar becomes a one-key tagged
    object: ``{"__dict__": [[key, value], ...]}``, ``{"__tuple__": [...]}``,
    ``{"__tensor__": name}``, ``{"__ndarray__": name}``. Tensor names follow the path
    (``"state/0/exp_avg"``), made unique when paths collide.

    Example:
        >>> import torch
        >>> tensors, skeleton = flatten_state({"state": {0: {"step": torch.tensor(3.0)}}})
        >>> list(tensors)
        ['state/0/step']
        >>> skeleton["__dict__"][0][1]["__dict__"][0][0]  # the int key survives
        0
        >>> unflatten_state(skeleton, tensors)
        {'state': {0: {'step': tensor(3.)}}}

    Raises:
        ValidationError: A value or key of an unsupported type.
    """
    tensors: dict[str, torch.Tensor] = {}
    return tensors, _flatten(tree, (), tensors)


def _unique_name(path: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> str:
    base = "/".join(path) or "value"
    name, n = base, 1
    while name in tensors:
        name, n = f"{base}#{n}", n + 1
    return name


def _flatten(node: Any, path: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> Any:
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, np.generic) and not isinstance(node, (np.void, np.object_)):
        return node.item()
    if isinstance(node, torch.Tensor):
        name = _unique_name(path, tensors)
        tensors[name] = node.detach()
        return {"__tensor__": name}
    if isinstance(node, np.ndarray) and not node.dtype.hasobject:
        name = _unique_name(path, tensors)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(node))
        return {"__ndarray__": name}
    if isinstance(node, Mapping):
        items = []
        for key, value in node.items():
            if key is not None and not isinstance(key, (bool, int, float, str)):
                raise ValidationError(
                    got=f"a dict key {key!r} of type {type(key).__name__} at {'/'.join(path)!r}",
                    expected="str, int, float, bool or None keys",
                    fix="convert the key to a str or int before saving",
                )
            items.append([key, _flatten(value, (*path, str(key)), tensors)])
        return {"__dict__": items}
    if isinstance(node, list):
        return [_flatten(value, (*path, str(i)), tensors) for i, value in enumerate(node)]
    if isinstance(node, tuple):
        return {"__tuple__": [_flatten(v, (*path, str(i)), tensors) for i, v in enumerate(node)]}
    raise ValidationError(
        got=f"a {type(node).__name__} at {'/'.join(path) or 'the root'!r}",
        expected="dicts, lists, tuples, tensors, arrays, numbers, str, bool or None",
        fix="convert the value to one of these before saving",
    )


#: Deepest nesting :func:`unflatten_state` follows (the states saved here nest about 6 deep).
MAX_DEPTH = 32


def unflatten_state(json_tree: Any, tensors: Mapping[str, torch.Tensor], depth: int = 0) -> Any:
    """Rebuild what :func:`flatten_state` split (tensors are returned as given, arrays as numpy).

    Raises:
        CheckpointCorruptError: The skeleton names a missing tensor, holds an unknown tag, a
            dict key that is not a JSON scalar, or nests deeper than :data:`MAX_DEPTH`.
    """
    if json_tree is None or isinstance(json_tree, (bool, int, float, str)):
        return json_tree
    if depth > MAX_DEPTH:
        raise CheckpointCorruptError(
            got=f"a state skeleton nested more than {MAX_DEPTH} levels deep",
            expected="the few levels a saved model state has",
            fix="the checkpoint's metadata is damaged or forged; use an earlier checkpoint",
        )
    if isinstance(json_tree, list):
        return [unflatten_state(value, tensors, depth + 1) for value in json_tree]
    if isinstance(json_tree, dict) and len(json_tree) == 1:
        ((tag, value),) = json_tree.items()
        if tag in ("__tensor__", "__ndarray__") and isinstance(value, str) and value in tensors:
            tensor = tensors[value]
            return tensor if tag == "__tensor__" else tensor.detach().cpu().numpy()
        if tag == "__tuple__" and isinstance(value, list):
            return tuple(unflatten_state(v, tensors, depth + 1) for v in value)
        if tag == "__dict__" and isinstance(value, list) and all(
            isinstance(item, list) and len(item) == 2
            and (item[0] is None or isinstance(item[0], (bool, int, float, str)))
            for item in value
        ):
            return {key: unflatten_state(v, tensors, depth + 1) for key, v in value}
    raise CheckpointCorruptError(
        got=f"a state skeleton node {str(json_tree)[:200]!r}",
        expected=f"JSON scalars, lists, or one-key objects tagged {list(_TAGS)} naming stored "
        "tensors",
        fix="the checkpoint's metadata and tensors do not match; use an earlier checkpoint",
    )
