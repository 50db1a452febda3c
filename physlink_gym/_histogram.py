"""The sparse log histogram of residuals that reports keep and plots draw.

Bin ``4 e + j`` holds ``r = m · 2**e`` (``np.frexp``, ``m`` in [0.5, 1)) with
``j = floor(8 (m − 0.5))``: four equal sub-bins per octave. One module owns the binning, so the
report that fills a histogram and the figure that draws it agree by construction.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bin_edges", "histogram_add"]

_SUB = 4  # histogram bins per octave


def histogram_add(hist: dict[int, int], residuals: np.ndarray) -> None:
    """Add positive finite ``residuals`` to a sparse log histogram ``{bin: count}`` in place.

    Example:
        >>> h = {}
        >>> histogram_add(h, np.array([0.5, 0.55, 1.0]))
        >>> h, bin_edges(0), bin_edges(4)
        ({0: 2, 4: 1}, (0.5, 0.625), (1.0, 1.25))
    """
    mant, expo = np.frexp(residuals)
    keys = _SUB * expo.astype(np.int64) + ((mant - 0.5) * (2 * _SUB)).astype(np.int64)
    uniq, counts = np.unique(keys, return_counts=True)
    for k, c in zip(uniq.tolist(), counts.tolist(), strict=True):
        hist[k] = hist.get(k, 0) + c


def bin_edges(key: int) -> tuple[float, float]:
    """Lower and upper residual edges of histogram bin ``key`` (see :func:`histogram_add`)."""
    expo, j = divmod(key, _SUB)
    step = 2.0**expo / (2 * _SUB)
    return 2.0**expo * 0.5 + j * step, 2.0**expo * 0.5 + (j + 1) * step
