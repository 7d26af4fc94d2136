"""Following a training run: TensorBoard event files (``tensorboard: true``, the default) and
the fold counter and time estimate of its epoch lines (:class:`RunClock`).

Each model folder (the run, or each ``fold{i}``) gets ``tensorboard/``, so ``tensorboard
--logdir runs`` shows every run and fold side by side. Per epoch, every column of
``metrics.csv`` (:func:`scalar_tags`); for segmentation also a few validation images with truth
(green) and predicted (red) masks (:func:`class_grid`, drawn by the trainer). A resumed run
drops the events after its checkpoint (``purge_step``), so the curves never fold back. The tracker takes plain values and images: only rank 0 makes one;
the writer is opened at the first epoch's end, so a run that cannot start writes no events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloudpipe.core.masks import panel_grid, tint
from cloudpipe.data.runfolder import TENSORBOARD_DIR

if TYPE_CHECKING:
    from cloudpipe.engine.stages import Metric

OVERLAYS = 3
"""Validation images drawn each epoch (segmentation)."""


def scalar_tags(row: Mapping[str, float], metrics: Iterable[Metric]) -> dict[str, float]:
    """A ``metrics.csv`` row as TensorBoard scalars, by tag: ``<x>_loss`` under ``loss/<x>``,
    each of ``metrics``' mean under ``val/<metric>`` and its classes under ``<metric>/<class>``,
    any other column as named; ``epoch`` is the step, not a scalar."""
    named = {}
    for metric in metrics:
        named[metric.column] = f"val/{metric.name}"
        named |= {column: f"{metric.name}/{c}" for c, column in metric.class_columns().items()}
    return {named.get(name, f"loss/{name.removesuffix('_loss')}" if name.endswith("_loss") else name): float(value)
            for name, value in row.items() if name != "epoch"}


def class_grid(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The classes' overlays of one image in the profile's class order, as a grid
    (:func:`~cloudpipe.core.masks.panel_grid`; 4 classes: 2 x 2), RGB uint8 (rows H, columns W, 3),
    black where the grid has no class; ``truth`` and ``pred`` are 0/1 masks (classes, H, W)."""
    rows, columns = panel_grid(len(truth))
    panels = [tint(image, truth[k], pred[k]) for k in range(len(truth))]
    panels += [np.zeros_like(panels[0])] * (rows * columns - len(panels))
    return np.concatenate([np.concatenate(panels[r * columns:(r + 1) * columns], axis=1) for r in range(rows)], axis=0)


class Tracker:
    """The event files of one model folder."""

    def __init__(self, folder: Path, start_epoch: int):
        self.folder, self.start_epoch, self.writer = Path(folder) / TENSORBOARD_DIR, start_epoch, None

    def log(self, step: int, scalars: Mapping[str, float], images: Sequence[np.ndarray] = ()) -> None:
        """One epoch's ``scalars`` (tag -> value, :func:`scalar_tags`) and ``images`` (RGB uint8
        (H, W, 3), e.g. :func:`class_grid`s, tagged ``val_masks/<i>``) at ``step`` (the epoch, from 1)."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.folder), purge_step=self.start_epoch + 1)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        for i, grid in enumerate(images):
            self.writer.add_image(f"val_masks/{i}", grid, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def duration(seconds: float) -> str:
    """``45s``, ``12m05s``, ``3h07m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class RunClock:
    """Where a run of one or K models is, for its epoch lines: ``fold i/K`` and an estimate of
    the time left for the whole run (the mean epoch so far times the epochs still to train)."""

    folds: int
    """0: a hold-out run (no fold counter)."""
    epochs_left: int
    """Epochs still to train in this call, every model counted in full until it starts."""
    fold: int = 0
    seconds: float = 0.0
    done: int = 0

    def begin(self, fold: int, trained: int) -> None:
        """Model ``fold`` starts (or is skipped, ``trained`` = all its epochs) with ``trained``
        epochs already behind it."""
        self.fold, self.epochs_left = fold, self.epochs_left - trained

    def tick(self, seconds: float) -> tuple[str, str]:
        """An epoch of ``seconds`` ended: the line's prefix (``fold 2/5  ``) and suffix (``  eta 12m05s``)."""
        self.done, self.seconds, self.epochs_left = self.done + 1, self.seconds + seconds, self.epochs_left - 1
        where = f"fold {self.fold + 1}/{self.folds}  " if self.folds >= 2 else ""
        eta = f"  eta {duration(self.seconds / self.done * self.epochs_left)}" if self.epochs_left > 0 else ""
        return where, eta
