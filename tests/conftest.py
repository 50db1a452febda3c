"""Shared test setup: one torch thread (small models are overhead-bound; CI has 2 cores)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

try:  # torch is optional for the foundation tests (doctor simulates its absence)
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test, restored after it (the learner tests use it).

    Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
    spin-waiting makes them many times slower.
    """
    import torch as _torch

    threads = _torch.get_num_threads()
    _torch.set_num_threads(1)
    yield
    _torch.set_num_threads(threads)
