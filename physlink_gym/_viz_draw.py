"""Helpers of :mod:`physlink_gym.viz`: triptych drawing (Agg figures to GIF frames), TB data.

The figure is built once; each frame only updates the data of the lines or images, which keeps
a 64-frame GIF at a few seconds on a laptop CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["draw_compliance", "hparams_of", "log10_samples", "write_triptych_gif"]

_MAX_LINES = 8  # more dimensions than this are drawn as heat-map strips
_TITLES = ("imagined (world model)", "real", "difference: imagined − real")


def _limits(*arrays: np.ndarray, symmetric: bool = False) -> tuple[float, float]:
    """Shared, padded axis limits over the finite values of ``arrays``."""
    values = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    if values.size == 0:
        return -1.0, 1.0
    low, high = float(values.min()), float(values.max())
    if symmetric:
        high = max(abs(low), abs(high), 1e-6)
        return -1.05 * high, 1.05 * high
    pad = 0.05 * (high - low) if high > low else 0.5
    return low - pad, high + pad


def _layout(plt: Any, frames: list[np.ndarray] | None, dpi: int, panel_inches: float) -> Any:
    """A figure with the three panel axes (and a frame axis in the middle column)."""
    height = panel_inches * (1.5 if frames else 0.9)
    fig = plt.figure(figsize=(3 * panel_inches, height), dpi=dpi)
    grid = fig.add_gridspec(2 if frames else 1, 3, height_ratios=[1.2, 1] if frames else None)
    if frames:
        axes = [fig.add_subplot(grid[:, 0]), fig.add_subplot(grid[1, 1]),
                fig.add_subplot(grid[:, 2])]  # fmt: skip
        frame_ax = fig.add_subplot(grid[0, 1])
        frame_ax.set_axis_off()
        frame_ax.set_title("real (rendered)", fontsize=9)
        return fig, axes, frame_ax
    return fig, [fig.add_subplot(grid[0, i]) for i in range(3)], None


def _line_artists(axes: Sequence[Any], names: Sequence[str], data: Sequence[np.ndarray],
                  context: int, length: int) -> list[list[Any]]:  # fmt: skip
    """Empty lines per panel and dimension; shared y-limits for imagined and real."""
    lims = [_limits(data[0], data[1])] * 2 + [_limits(data[2], symmetric=True)]
    colors = [f"C{i % 10}" for i in range(len(names))]
    artists = []
    for ax, title, lim in zip(axes, _TITLES, lims, strict=True):
        lines = [
            ax.plot([], [], color=c, lw=1.4, label=n)[0] for c, n in zip(colors, names, strict=True)
        ]
        ax.set_xlim(0, max(length - 1, 1))
        ax.set_ylim(*lim)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("time step")
        ax.grid(alpha=0.3)
        ax.axvline(context - 0.5, color="0.4", ls="--", lw=1)
        artists.append(lines)
    axes[0].set_ylabel("observation value")
    axes[2].axhline(0.0, color="0.2", lw=0.8)
    return artists


def _heat_artists(fig: Any, axes: Sequence[Any], names: Sequence[str],
                  data: Sequence[np.ndarray], context: int) -> list[Any]:  # fmt: skip
    """One image per panel, dimensions as rows; shared colour scale for imagined and real."""
    vmax = max(abs(v) for v in _limits(data[0], data[1]))
    dmax = _limits(data[2], symmetric=True)[1]
    images = []
    for i, (ax, title) in enumerate(zip(axes, _TITLES, strict=True)):
        diff = i == 2
        image = ax.imshow(np.full(data[i].T.shape, np.nan), aspect="auto", interpolation="nearest",
                          cmap="RdBu_r" if diff else "viridis",
                          vmin=-dmax if diff else -vmax, vmax=dmax if diff else vmax)  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("time step")
        ax.set_yticks(range(len(names)), names if i == 0 else [""] * len(names), fontsize=7)
        ax.axvline(context - 0.5, color="k", ls="--", lw=1.2)
        label = "difference (std of real)" if diff else "value (std of real)"
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02).set_label(label, fontsize=8)
        images.append(image)
    return images


def _standardise(pred: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = real.mean(0), real.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    return (pred - mean) / std, (real - mean) / std


def _animate(fig: Any, moving: list[Any], data: Sequence[np.ndarray],
             frames: list[np.ndarray] | None, heat: bool,
             marks: Sequence[str] | None = None) -> list[np.ndarray]:  # fmt: skip
    """Blit: draw the static figure once, then only the moving artists for each time step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas: Any = FigureCanvasAgg(fig)
    label = fig.text(0.01, 0.005, "", color="#c0392b", fontsize=9, animated=True)
    for artist in moving:
        artist.set_animated(True)
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    n_dims = data[0].shape[1]
    out = []
    for t in range(len(data[0])):
        canvas.restore_region(background)
        for i, artist in enumerate(moving):
            if heat and i < 3:
                masked = np.full(data[i].T.shape, np.nan)
                masked[:, : t + 1] = data[i][: t + 1].T
                artist.set_data(masked)
            elif i < 3 * n_dims and not heat:
                values = data[i // n_dims][: t + 1, i % n_dims]
                artist.set_data(np.arange(t + 1), values)
            elif frames:
                artist.set_data(frames[min(t, len(frames) - 1)])
            artist.axes.draw_artist(artist)
        if marks:
            label.set_text(marks[t] if t < len(marks) else "")
            fig.draw_artist(label)
        out.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    return out


def write_triptych_gif(
    pred: np.ndarray, real: np.ndarray, frames: list[np.ndarray] | None, context: int,
    names: Sequence[str], path: Path, *, fps: int, dpi: int, panel_inches: float,
    marks: Sequence[str] | None = None,
) -> Path:  # fmt: skip
    """Draw ``len(real)`` frames (time ``0..t`` each) and save them as a looping GIF."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from PIL import Image

    length = len(real)
    heat = real.shape[1] > _MAX_LINES
    if heat:
        pred, real = _standardise(pred, real)
    data = (pred, real, pred - real)
    fig, axes, frame_ax = _layout(plt, frames, dpi, panel_inches)
    fig.suptitle(f"World model: open loop after {context} observed steps (dashed line)",
                 fontsize=11)  # fmt: skip
    try:
        if heat:
            images = _heat_artists(fig, axes, names, data, context)
        else:
            lines = _line_artists(axes, names, data, context, length)
            fig.legend(handles=lines[1], loc="lower center", ncol=min(len(names), 8),
                       fontsize=8, frameon=False)  # fmt: skip
        fig.tight_layout(rect=(0, 0 if heat else 0.07, 1, 1))
        shown = frame_ax.imshow(frames[0]) if frames else None
        moving = [*(images if heat else [a for panel in lines for a in panel])]
        if shown is not None:
            moving.append(shown)
        arrays = _animate(fig, moving, data, frames, heat, marks)
    finally:
        plt.close(fig)
    # One palette for all frames (from the last, most complete one): quantising each frame
    # on its own costs ~10x more and makes colours flicker between frames.
    palette = Image.fromarray(arrays[-1]).quantize(255, method=Image.Quantize.MEDIANCUT)
    pictures = [Image.fromarray(a).quantize(palette=palette, dither=Image.Dither.NONE)
                for a in arrays]  # fmt: skip
    pictures[0].save(path, save_all=True, append_images=pictures[1:], loop=0,
                     duration=max(int(1000 / max(fps, 1)), 20))  # fmt: skip
    return path


def hparams_of(model: Any) -> dict[str, Any]:
    """Scalar hyperparameters of ``model`` for TensorBoard's HPARAMS tab."""
    params: dict[str, Any] = {"algorithm": type(model).__name__}
    env = getattr(model, "env", None)
    params["n_envs"] = int(getattr(env, "num_envs", 1))
    for name in ("preset", "learning_starts", "gamma", "batch_size", "learning_rate"):
        value = getattr(model, name, None)
        if isinstance(value, (bool, int, float, str)):
            params[name] = value
    config = getattr(model, "config", None)
    for name in ("train_ratio", "batch_size", "batch_length", "lr", "deter", "imag_horizon"):
        value = getattr(config, name, None)
        if isinstance(value, (bool, int, float, str)):
            params[name] = value
    return params


def log10_samples(inv: Any, limit: int = 20_000) -> np.ndarray:
    """``log10(residual)`` samples rebuilt from the report's histogram (bin centres).

    Zero and non-finite residuals have no logarithm and are left out (their counts are in
    the compliance plot). Counts are scaled down to at most ``limit`` samples in all.
    """
    from physlink_gym._histogram import bin_edges

    keys = sorted(inv.histogram)
    if not keys:
        return np.zeros(0, np.float32)
    counts = np.array([inv.histogram[k] for k in keys], np.float64)
    if counts.sum() > limit:
        counts = np.maximum(np.round(counts * limit / counts.sum()), 1)
    centres = np.log10([np.sqrt(lo * hi) for lo, hi in map(bin_edges, keys)])
    return np.repeat(centres, counts.astype(np.int64)).astype(np.float32)


def draw_compliance(report: Any) -> Any:
    """One residual histogram per invariant (log axis), bars above the tolerance in red.

    Invariants without a positive finite residual get a line of text instead of empty axes.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from physlink_gym._histogram import bin_edges

    invs = list(report.invariants) or [None]
    ratios = [1.0 if inv is not None and inv.histogram else 0.3 for inv in invs]
    fig, axes = plt.subplots(len(invs), 1, figsize=(7, 0.6 + 2.2 * sum(ratios)), squeeze=False,
                             gridspec_kw={"height_ratios": ratios})  # fmt: skip
    rate = report.invalid_steps / report.steps if report.steps else 0.0
    fig.suptitle(f"Invariant residuals: {report.steps} steps in {report.env_count} env(s), "
                 f"{rate:.1%} flagged", fontsize=11)  # fmt: skip
    for ax, inv in zip(axes[:, 0], invs, strict=True):
        if inv is None:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no invariants", ha="center", va="center")
            continue
        head = f"{inv.name} ({inv.mode}, tolerance {inv.tolerance:.3g}): {inv.status}"
        if inv.status == "NOT_APPLICABLE":
            ax.set_axis_off()
            ax.set_title(head, fontsize=10, loc="left")
            ax.text(0.02, 0.3, str(inv.not_applicable), va="center", fontsize=9)
            continue
        head += f", {inv.violations}/{inv.checked} violations ({inv.violation_rate:.1%})"
        ax.set_title(head, fontsize=10, loc="left")
        keys = sorted(inv.histogram)
        if not keys:
            ax.set_axis_off()
            ax.text(0.02, 0.3, f"all residuals were 0 ({inv.zeros}) or non-finite "
                    f"({inv.nonfinite}): no histogram", va="center", fontsize=9,
                    color="0.3")  # fmt: skip
            continue
        edges = np.array([bin_edges(k) for k in keys])
        over = edges[:, 0] >= inv.tolerance
        ax.bar(edges[:, 0], [inv.histogram[k] for k in keys], width=edges[:, 1] - edges[:, 0],
               align="edge", color=np.where(over, "tab:red", "tab:blue"))  # fmt: skip
        ax.set_xscale("log")
        if inv.tolerance > 0:
            ax.axvline(inv.tolerance, color="k", linestyle="--", lw=1, label="tolerance")
            ax.legend(fontsize=8, loc="upper left")
        ax.set_xlabel(f"residual (plus {inv.zeros} zeros, {inv.nonfinite} non-finite)",
                      fontsize=9)  # fmt: skip
        ax.set_ylabel("steps")
    fig.tight_layout()
    return fig
