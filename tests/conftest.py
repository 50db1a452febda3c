"""Shared test setup: one torch thread (small models are overhead-bound; CI has 2 cores)."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

try:  # torch is optional for the foundation tests (doctor simulates its absence)
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass
