"""The competition metric: mean Dice over (image, class) pairs, empty vs empty = 1.

Everything reduces per-pair statistics (intersection, predicted area, true area), so blanking a
pair, or a whole threshold sweep, needs no further mask work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cloudpipe.competition import CLASSES
from cloudpipe.data import read_mask_csv, to_wide
from cloudpipe.errors import CloudpipeError
from cloudpipe.masks import resize_nearest
from cloudpipe.rle import parse_rle, rle2mask


@dataclass(frozen=True)
class PairStats:
    """Per-pair statistics, arrays of shape (n_images, n_classes)."""

    images: list[str]
    intersection: np.ndarray
    pred_area: np.ndarray
    truth_area: np.ndarray

    def dice(self) -> np.ndarray:
        """Dice per pair, 1 where both masks are empty."""
        denominator = self.pred_area + self.truth_area
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator == 0, 1.0, 2.0 * self.intersection / denominator)

    def blanked_dice(self) -> np.ndarray:
        """Dice per pair if the prediction were emptied: 1 for absent classes, else 0."""
        return (self.truth_area == 0).astype(np.float64)


def pair_stats(
    truth: pd.DataFrame,
    pred: pd.DataFrame,
    truth_shape: tuple[int, int],
    pred_shape: tuple[int, int],
) -> PairStats:
    """Statistics of every (image, class) pair of two wide RLE frames with the same images.

    Truth masks are resized to ``pred_shape`` with nearest-neighbour when the shapes differ.
    """
    images = list(pred.index)
    truth = truth.loc[images, list(CLASSES)].to_numpy()
    pred = pred.loc[images, list(CLASSES)].to_numpy()
    shape = (len(images), len(CLASSES))
    inter, p_area, t_area = (np.zeros(shape, np.int64) for _ in range(3))
    for i in range(shape[0]):
        for k in range(shape[1]):
            if not pred[i, k] and not truth[i, k]:
                continue
            p = rle2mask(pred[i, k], pred_shape).astype(bool)
            t = resize_nearest(rle2mask(truth[i, k], truth_shape), pred_shape).astype(bool)
            inter[i, k] = np.count_nonzero(p & t)
            p_area[i, k] = np.count_nonzero(p)
            t_area[i, k] = np.count_nonzero(t)
    return PairStats(images, inter, p_area, t_area)


def dice_table(dice: np.ndarray) -> dict[str, float]:
    """Mean Dice per class and overall (``"mean"``) of a (n_images, n_classes) Dice array."""
    table = {c: float(dice[:, k].mean()) for k, c in enumerate(CLASSES)}
    table["mean"] = float(dice.mean())
    return table


def accuracy(probs: np.ndarray, labels: np.ndarray, threshold: float | np.ndarray = 0.5) -> np.ndarray:
    """Per-class accuracy of ``probs >= threshold`` against 0/1 ``labels`` (n, n_classes)."""
    return ((probs >= threshold) == (labels > 0)).mean(axis=0)


def require_same_images(expected: list[str], got: list[str], what: str) -> None:
    """Raise a one-line error listing missing and extra images when two image sets differ."""
    got_set, expected_set = set(got), set(expected)
    missing = [i for i in expected if i not in got_set]
    extra = [i for i in got if i not in expected_set]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} image(s) (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"has {len(extra)} extra image(s) (e.g. {', '.join(extra[:3])})")
        raise CloudpipeError(f"{what} " + " and ".join(parts))


def evaluate_files(
    truth_csv: Path,
    pred_csv: Path,
    truth_shape: tuple[int, int],
    pred_shape: tuple[int, int],
) -> dict[str, float]:
    """Kaggle Dice of a submission file against a truth file, per class and ``"mean"``.

    Raises:
        CloudpipeError: invalid CSVs or RLE, or the two files cover different images.
    """
    truth_frame = read_mask_csv(truth_csv, shape=truth_shape)
    _check_truth_shape(truth_frame, truth_csv, truth_shape, pred_shape)
    truth = to_wide(truth_frame)
    pred = to_wide(read_mask_csv(pred_csv, shape=pred_shape))
    require_same_images(list(truth.index), list(pred.index), f"{pred_csv}: compared with {truth_csv}, it")
    return dice_table(pair_stats(truth, pred, truth_shape, pred_shape).dice())


def _check_truth_shape(truth: pd.DataFrame, path: Path, truth_shape: tuple[int, int], pred_shape: tuple[int, int]) -> None:
    """Catch truth masks read at the wrong size: RLE that is valid for a large mask is also
    valid for a smaller one, and would silently score wrong. When every truth mask ends
    inside the first ``pred`` pixels of a larger ``truth_shape``, the truth is at the smaller
    size (a real 1400 x 2100 mask set never lies entirely in its first 87 columns)."""
    pred_pixels = pred_shape[0] * pred_shape[1]
    if truth_shape[0] * truth_shape[1] <= pred_pixels:
        return
    ends = [int(s[-1] + n[-1]) for s, n in (parse_rle(r, truth_shape) for r in truth["EncodedPixels"] if r)]
    if len(ends) >= 8 and max(ends) <= pred_pixels:
        raise CloudpipeError(
            f"every truth mask fits in {pred_pixels} pixels: it looks like the truth is at "
            f"{pred_shape[0]}x{pred_shape[1]}, not {truth_shape[0]}x{truth_shape[1]}; pass --truth-shape "
            f"{pred_shape[0]} {pred_shape[1]} (or the truth's real size)",
            path=path,
        )
