"""Figures on matplotlib's Agg canvas (no display, no global state): builders return a
``Figure``; :func:`save_png` writes one atomically, :func:`image_bytes` gives its bytes (for a
page that embeds it).

matplotlib is imported inside the functions: importing cloudpipe stays fast.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloudpipe.data.outputs import write_files

if TYPE_CHECKING:
    from cloudpipe.algorithms.thresholds import Sweep


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_writer(fig) -> Callable[[Path], None]:
    """A writer of a figure as PNG, for :func:`~cloudpipe.data.outputs.write_files` (and a
    command runner's ``write``)."""
    return lambda path: fig.savefig(path, format="png")


def save_png(fig, path: Path) -> Path:
    """Write a figure as PNG, atomically; returns ``path``."""
    write_files({Path(path): figure_writer(fig)})
    return Path(path)


def image_bytes(fig, format: str = "png") -> bytes:
    """A figure as PNG (or ``jpeg``: far smaller for photographs) bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=format, **({"pil_kwargs": {"quality": 85}} if format == "jpeg" else {}))
    return buffer.getvalue()


def threshold_figure(sweeps: Mapping[str, Sweep], *, metric: str = "Dice", images: int | None = None,
                     which: str = "validation", applied: Mapping[str, float] | None = None):
    """Plot each class's mean ``metric`` against its threshold (one panel per sweep, in a grid: :func:`~cloudpipe.core.masks.panel_grid`) as
    steps up to 1, the chosen point marked, a dashed line at 0.5, a dotted one at the score with
    no blanking; ``applied``: class -> a threshold chosen elsewhere, marked with its score here.
    ``images`` and ``which`` (``validation``, ``scored``...) go in the title.
    """
    from cloudpipe.core.masks import panel_grid

    rows, columns = panel_grid(len(sweeps))
    fig = _figure(5 * columns, 3.5 * rows)
    axes = fig.subplots(rows, columns, sharex=True, squeeze=False).ravel()
    for ax, (cls, s) in zip(axes, sweeps.items()):
        x, y = s.thresholds, s.scores
        if x[-1] < 1:  # the last candidate's score holds up to 1
            x, y = np.append(x, 1.0), np.append(y, y[-1])
        ax.step(x, y, where="pre", color="tab:blue", linewidth=1.5)
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1, label=f"0.5: {s.score_at(0.5):.4f}")
        ax.axhline(s.score_at(0.0), color="grey", linestyle=":", linewidth=1, label=f"no blanking: {s.score_at(0.0):.4f}")
        best = "best here" if applied is not None else "tuned"
        ax.plot([s.threshold], [s.score], "o", color="tab:red", label=f"{best} {s.threshold:.3f}: {s.score:.4f}")
        if applied is not None:
            ax.plot([applied[cls]], [s.score_at(applied[cls])], "D", color="tab:green",
                    label=f"applied {applied[cls]:.3f}: {s.score_at(applied[cls]):.4f}")
        ax.set_title(cls)
        ax.set_xlim(0, 1)
        ax.set_ylabel(f"mean {metric}")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    for ax in axes[len(sweeps):]:
        ax.set_visible(False)
    for ax in axes[-columns:]:
        ax.set_xlabel("threshold (mask blanked when probability < threshold)")
    fig.suptitle(f"{metric} against presence threshold" + (f" ({images} {which} images)" if images else ""))
    return fig


def overlay_figure(image: np.ndarray, *, truth: np.ndarray | None = None, pred: np.ndarray | None = None,
                   title: str = "", width: float = 12, dice: Sequence[float] | None = None):
    """One panel per class: the RGB uint8 ``image``, ``truth`` masks in green and ``pred`` in red
    (0/1 (classes, H, W) at the image's size; overlap yellow), each mask's area and the class's
    ``dice`` (when given) in the panel title; ``width`` in inches.
    """
    from cloudpipe.core.masks import panel_grid, tint
    from cloudpipe.core.profile import active

    height, pixels_wide = image.shape[:2]
    rows, columns = panel_grid(len(active().classes))
    fig = _figure(width, width * rows * height / (columns * pixels_wide) + 0.6)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(active().classes):]:
        ax.set_axis_off()
    for k, (ax, cls) in enumerate(zip(axes, active().classes)):
        t = truth[k].astype(bool) if truth is not None else np.zeros((height, pixels_wide), bool)
        p = pred[k].astype(bool) if pred is not None else np.zeros((height, pixels_wide), bool)
        parts = [f"{name} {m.mean():.0%}" for name, m, given in (("truth", t, truth), ("pred", p, pred)) if given is not None]
        ax.imshow(tint(image, t, p))
        if dice is not None:
            parts.append(f"Dice {dice[k]:.2f}")
        ax.set_title(f"{cls}" + (f" ({', '.join(parts)})" if parts else ""))
        ax.set_axis_off()
    fig.suptitle(title + "  (truth green, prediction red, both yellow)")
    return fig


def lines_figure(x: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str, xlabel: str, ylabel: str,
                 counts: Sequence[int] | None = None):
    """One line per series (name -> one value per bin, NaN: no point) over the bin labels ``x``;
    ``counts`` (pairs per bin) as a grey bar chart on a second axis."""
    fig = _figure(8, 4.2)
    ax = fig.subplots()
    positions = np.arange(len(x))
    if counts is not None:
        bars = ax.twinx()
        bars.bar(positions, counts, color="0.85", width=0.6, zorder=0)
        bars.set_ylabel("pairs")
        ax.set_zorder(bars.get_zorder() + 1)
        ax.patch.set_visible(False)
    for name, values in series.items():
        ax.plot(positions, values, marker="o", label=name)
    ax.set_xticks(positions, x, rotation=30, ha="right")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig
