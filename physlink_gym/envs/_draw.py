"""Tiny numpy rasteriser for the analytic envs' ``rgb_array`` frames (no pygame needed)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["disc", "segment"]

Color = tuple[int, int, int]


def disc(frame: NDArray[np.uint8], cx: float, cy: float, radius: float, color: Color) -> None:
    """Fill a disc centred at pixel ``(cx, cy)`` (x right, y down)."""
    h, w = frame.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    frame[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2] = color


def segment(frame: NDArray[np.uint8], p0: tuple[float, float], p1: tuple[float, float],
            width: float, color: Color) -> None:
    """Draw a thick line from pixel ``p0`` to pixel ``p1``."""
    h, w = frame.shape[:2]
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / length2, 0.0, 1.0) if length2 > 0 else 0.0
    dist2 = (xx - x0 - t * dx) ** 2 + (yy - y0 - t * dy) ** 2
    frame[dist2 <= (width / 2.0) ** 2] = color
