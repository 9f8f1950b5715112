"""The plotting pieces every figure shares: an Agg figure, frame panels, overlays, saving.

matplotlib is imported with the Agg backend selected before pyplot, so the figures render on a
machine without a display (CI, a GPU node) and never open a window.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless rendering, no display needed

import matplotlib.pyplot as plt  # after matplotlib.use: the backend must be chosen first
import numpy as np

__all__ = [
    "frame_grid",
    "heat_rgb",
    "label_axis",
    "overlay",
    "pick_frames",
    "plt",
    "safe_name",
    "save_png",
]

#: pixels per inch of every PNG written (panel sizes below are in inches)
DPI = 100


def pick_frames(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``0 .. num_frames - 1``, first and last included
    (all frames when there are no more than ``count``)."""
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")
    if count < 1:
        raise ValueError(f"--frames must be >= 1, got {count}")
    if count >= num_frames:
        return list(range(num_frames))
    if count == 1:
        return [num_frames // 2]
    return [round(i * (num_frames - 1) / (count - 1)) for i in range(count)]


def heat_rgb(values: np.ndarray, *, cmap: str = "jet") -> np.ndarray:
    """float (H, W) in [0, 1] -> float32 (H, W, 3) RGB in [0, 1] through a matplotlib colormap."""
    return plt.get_cmap(cmap)(np.clip(values, 0.0, 1.0))[..., :3].astype(np.float32)


def overlay(frame: np.ndarray, values: np.ndarray, *, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """A heat map blended over a frame.

    Args:
        frame: uint8 (H, W, 3) RGB.
        values: float (H, W) in [0, 1] (the map, same size as the frame).
        alpha: weight of the heat map.

    Returns:
        float32 (H, W, 3) RGB in [0, 1].
    """
    if values.shape != frame.shape[:2]:
        raise ValueError(f"overlay: map {values.shape} and frame {frame.shape[:2]} differ in size")
    return (1.0 - alpha) * (frame.astype(np.float32) / 255.0) + alpha * heat_rgb(values, cmap=cmap)


def frame_grid(rows: int, cols: int, *, panel: float = 1.6, title: str | None = None):
    """A figure of ``rows`` x ``cols`` image panels without ticks; returns ``(fig, axes)`` with
    axes a 2-D array (rows, cols)."""
    fig, axes = plt.subplots(rows, cols, figsize=(panel * cols + 1.4, panel * rows + 0.5),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return fig, axes


def label_axis(ax, text: str, *, row: bool) -> None:
    """Row labels go to the left of the first column, column labels above the first row."""
    if row:
        ax.set_ylabel(text, fontsize=7, rotation=0, ha="right", va="center", labelpad=4)
    else:
        ax.set_title(text, fontsize=7)


def save_png(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (parents created), close it, return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def safe_name(name: str) -> str:
    """A file-name-safe version of a video id or checkpoint label."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
