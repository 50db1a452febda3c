"""Writing and checking the files physlink_gym saves, with numpy and the standard library only.

Every file physlink_gym writes goes through :func:`atomic_write`: the bytes go to a temporary
file in the destination's directory, are flushed and fsynced, and only then renamed over the
destination (``os.replace``), so a crash mid-write leaves the previous file intact. Arrays are
saved as uncompressed ``.npz`` (:func:`write_npz`, never pickled), and every reader first checks
that it reads a regular file whose zip members are neither encrypted, compressed nor larger than
the file (:func:`check_regular_file`, :func:`check_members`). This module needs no torch, so the
light install (wrapper, invariants, reports, trajectories) uses it too.
"""

from __future__ import annotations

import errno
import glob
import os
import secrets
import stat
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from physlink_gym.errors import CheckpointCorruptError, ValidationError, WriteError

__all__ = ["atomic_write", "check_members", "check_regular_file", "corrupt", "write_npz"]


def _fsync_directory(directory: Path) -> None:
    """Persist a rename on POSIX file systems (best effort elsewhere)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse directory fsync
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], writer: Callable[[BinaryIO], object]) -> Path:
    """Write a file atomically: temp file in the same directory, fsync, ``os.replace``.

    The parent directory is created when missing. The temporary file is named
    ``.<name>.<random>.tmp`` and is removed when ``writer`` (or anything after it) raises, so a
    failed write leaves the previous file, if any, untouched and no temporary file behind;
    temporary files of ``path`` that a killed process left (untouched for a minute) are
    removed first. The new file gets the usual permissions (``0o666`` minus the umask).

    Raises:
        WriteError: ``path`` is a folder, lies under a file, or its folder is read-only (the
            message names ``path``, not the temporary file).

    Args:
        path: Destination path, used exactly as given (no suffix is added).
        writer: Called once with a binary file object open for writing.

    Returns:
        The destination as a :class:`~pathlib.Path`.
    """
    target = Path(path)
    if target.is_dir():
        raise _write_error(target, "which is a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(target)
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o666)
    except (FileExistsError, NotADirectoryError) as exc:
        raise _write_error(target, f"under a file ({exc.strerror})") from None
    except PermissionError as exc:
        raise _write_error(target, f"in a folder that is not writable ({exc.strerror})") from None
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            raise _no_room_error(target, exc, 0) from None
        raise
    written = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
            handle.flush()
            written = handle.tell()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            written = max(written, tmp.stat().st_size)
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, (IsADirectoryError, PermissionError)):
            raise _write_error(target, f"which cannot be replaced ({exc.strerror})") from None
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            raise _no_room_error(target, exc, written) from None
        raise
    _fsync_directory(target.parent)
    return target


#: errno values that mean "no room here": disk full, quota exceeded, read-only file system.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _no_room_error(target: Path, exc: OSError, written: int) -> WriteError:
    kept = ("the previous file there is intact" if target.exists()
            else "nothing was left there")
    so_far = f" after {written:,} bytes" if written else ""
    return WriteError(
        got=f"{str(target)!r} could not be written{so_far}: {exc.strerror} "
        f"(errno {exc.errno}); {kept}",
        expected=f"room for the file in {str(target.parent)!r} (a writable file system with "
        "free space)",
        fix="free disk space or pass a path on another disk (df -h shows free space); "
        "the partial file was removed",
    )


def _write_error(target: Path, why: str) -> WriteError:
    return WriteError(got=f"a file to write at {str(target)!r}, {why}",
                      expected="a file path in a writable folder",
                      fix="pass another path (e.g. runs/model.zip), or fix the folder's "
                      "permissions")


def _remove_stale_temporaries(target: Path, age: float = 60.0) -> None:
    """Remove ``.<name>.<hex>.tmp`` files of ``target`` untouched for ``age`` seconds."""
    now = time.time()
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        try:
            if len(stale.name) == len(target.name) + 18 and now - stale.stat().st_mtime > age:
                stale.unlink()
        except OSError:
            pass


def write_npz(handle: BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays as an uncompressed ``.npz`` archive without ever pickling.

    Arrays are streamed member by member in chunks (numpy's ``write_array``), so a large,
    possibly non-contiguous view is never copied whole into memory. Object arrays are refused.

    Args:
        handle: A binary file object open for writing.
        arrays: Member name (without ``.npy``) to array.

    Raises:
        ValidationError: An array has an object dtype.
    """
    with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            array = np.asanyarray(value)
            if array.dtype.hasobject:
                raise ValidationError(
                    got=f"array {name!r} with dtype object",
                    expected="numeric, bool or unicode arrays",
                    fix="convert the field to a numeric array (object arrays would need pickle)",
                )
            with zf.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


_ANY_FILE = "a file written by physlink_gym (an uncompressed zip)"


def corrupt(path: str | os.PathLike[str], problem: str, fix: str = "",
            expected: str = _ANY_FILE) -> CheckpointCorruptError:
    """A CheckpointCorruptError naming ``path`` and what is wrong with it."""
    return CheckpointCorruptError(
        got=f"{os.fspath(path)!r}: {problem}", expected=expected,
        fix=fix or "check the path, or use an earlier copy (this file is damaged)",
    )


def check_regular_file(path: str | os.PathLike[str]) -> int:
    """The size of ``path`` if it is a regular file; else a :class:`CheckpointCorruptError`.

    A device or pipe (``/dev/zero``, a FIFO) would be read forever, so it is refused before
    anything is opened.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        raise corrupt(path, "no such file", "check the path") from exc
    except (OSError, ValueError) as exc:
        raise corrupt(path, f"cannot be read ({type(exc).__name__}: {exc})", "",
                       _ANY_FILE) from exc
    if not stat.S_ISREG(info.st_mode):
        raise corrupt(path, "not a regular file (a directory, device or pipe)",
                       "pass the path of a file saved by physlink_gym")
    return info.st_size


def check_members(path: str | os.PathLike[str], archive: zipfile.ZipFile, size: int,
                  limits: Mapping[str, int] | None = None) -> None:
    """Refuse encrypted, compressed or oversized members before reading any of them.

    physlink_gym writes every member uncompressed (``ZIP_STORED``), so a member never inflates
    beyond the bytes on disk: a declared size larger than the file (a zip bomb, a forged
    header) is refused at once, without allocating it. ``limits`` caps members by name.
    """
    for info in archive.infolist():
        if info.flag_bits & 0x1:
            raise corrupt(path, f"member {info.filename!r} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED:
            raise corrupt(path, f"member {info.filename!r} is compressed (physlink_gym writes "
                           "uncompressed members)")
        cap = min(size, (limits or {}).get(info.filename, size))
        if info.file_size > cap or info.compress_size > size:
            raise corrupt(path, f"member {info.filename!r} declares {info.file_size} bytes, "
                           f"more than the {cap} allowed")
