"""Errors of env worker processes, passed to the process that started them.

SB3's ``SubprocVecEnv`` worker sends results through a pipe and has no message for an
exception: when an env (an :class:`~physlink_gym.InvariantWrapper` with ``on_error="raise"``)
raises in the worker, the worker ends and the parent only sees ``EOFError`` from the dead pipe.
So an error raised on purpose in a worker process is also written, as text, to a small file
named after the parent's and the worker's process ids; the parent reads (and removes) the files
of its own workers when a pipe breaks, and raises a clear error that quotes them.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from pathlib import Path

__all__ = ["report_in_worker", "worker_errors"]


def _folder(parent_pid: int) -> Path:
    return Path(tempfile.gettempdir()) / "physlink_gym_worker_errors" / str(parent_pid)


def report_in_worker(exc: BaseException) -> None:
    """In a worker process, leave ``exc``'s message for the parent (no-op in a main process)."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    try:
        folder = _folder(parent.pid)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{os.getpid()}.tmp"
        tmp.write_text(f"{type(exc).__name__}: {exc}")
        os.replace(tmp, folder / f"{os.getpid()}.txt")
    except OSError:  # best effort: the worker's own traceback still goes to its stderr
        pass


def worker_errors() -> list[str]:
    """The messages this process's workers left (read once: the files are removed)."""
    folder = _folder(os.getpid())
    messages = []
    for path in sorted(folder.glob("*.txt")):
        try:
            messages.append(path.read_text()[:2000])
            path.unlink()
        except OSError:
            continue
    return messages
