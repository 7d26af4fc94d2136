"""Figures, written as PNG files with matplotlib's Agg canvas (no display, no global state).

matplotlib is imported inside the functions: importing cloudpipe stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloudpipe.data.outputs import atomic_path

if TYPE_CHECKING:
    from cloudpipe.algorithms.thresholds import Sweep


def plot_threshold_curves(sweeps: Mapping[str, Sweep], path: Path, *, metric: str = "Dice",
                          images: int | None = None) -> Path:
    """Plot each class's mean score against its threshold, the chosen point marked.

    The score is a step function of the threshold: constant between two candidates, so each
    curve is drawn as steps up to 1. A dashed line marks 0.5, a dotted one the score with no
    blanking.

    Args:
        sweeps: class -> :class:`~cloudpipe.algorithms.thresholds.Sweep`, one panel each (up to 4).
        path: PNG file to write (atomically).
        metric: name of the score on the y axis.
        images: number of validation images, for the title.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, (cls, s) in zip(axes, sweeps.items()):
        x, y = s.thresholds, s.scores
        if x[-1] < 1:  # the last candidate's score holds up to 1
            x, y = np.append(x, 1.0), np.append(y, y[-1])
        ax.step(x, y, where="pre", color="tab:blue", linewidth=1.5)
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1, label=f"0.5: {s.score_at(0.5):.4f}")
        ax.axhline(s.score_at(0.0), color="grey", linestyle=":", linewidth=1, label=f"no blanking: {s.score_at(0.0):.4f}")
        ax.plot([s.threshold], [s.score], "o", color="tab:red", label=f"tuned {s.threshold:.3f}: {s.score:.4f}")
        ax.set_title(cls)
        ax.set_xlim(0, 1)
        ax.set_ylabel(f"mean {metric}")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    for ax in axes[len(sweeps):]:
        ax.set_visible(False)
    for ax in axes[-2:]:
        ax.set_xlabel("threshold (mask blanked when probability < threshold)")
    fig.suptitle(f"{metric} against presence threshold" + (f" ({images} validation images)" if images else ""))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def plot_overlay(image: np.ndarray, path: Path, *, truth: np.ndarray | None = None, pred: np.ndarray | None = None,
                 title: str = "") -> Path:
    """One panel per class: the image, truth masks in green and predicted masks in red
    (overlap yellow), each mask's area in the panel title.

    Args:
        image: RGB uint8 (H, W, 3).
        path: PNG file to write (atomically).
        truth, pred: 0/1 masks (4, H, W) at the image's size, or None.
        title: figure title.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cloudpipe.core.competition import CLASSES

    height, width = image.shape[:2]
    fig = Figure(figsize=(12, 12 * height / width + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for k, (ax, cls) in enumerate(zip(fig.subplots(2, 2).ravel(), CLASSES)):
        t = truth[k].astype(bool) if truth is not None else np.zeros((height, width), bool)
        p = pred[k].astype(bool) if pred is not None else np.zeros((height, width), bool)
        tint = np.zeros((height, width, 3), np.float32)
        tint[t & ~p], tint[p & ~t], tint[t & p] = (0, 255, 0), (255, 0, 0), (255, 255, 0)
        on = (t | p)[..., None]
        shown = np.where(on, 0.55 * image + 0.45 * tint, image)
        parts = [f"{name} {m.mean():.0%}" for name, m, given in (("truth", t, truth), ("pred", p, pred)) if given is not None]
        ax.imshow(shown.clip(0, 255).astype(np.uint8))
        ax.set_title(f"{cls}" + (f" ({', '.join(parts)})" if parts else ""))
        ax.set_axis_off()
    fig.suptitle(title + "  (truth green, prediction red, both yellow)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
