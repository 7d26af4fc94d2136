"""The competition metric: mean Dice over (image, class) pairs, empty vs empty = 1.

Everything reduces per-pair statistics (intersection, predicted area, true area), so blanking a
pair, or a whole threshold sweep, needs no further mask work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cloudpipe.core.arrays import check_numbers
from cloudpipe.core.masks import resize_nearest
from cloudpipe.core.profile import active
from cloudpipe.core.rle import rle2mask


def dice_score(intersection: np.ndarray, pred_area: np.ndarray, truth_area: np.ndarray) -> np.ndarray:
    """The competition's Dice of each pair from its statistics (arrays of any one shape):
    ``2 |P & T| / (|P| + |T|)``, and 1 where both masks are empty.

    This is the one place the formula is written; everything that scores masks calls it.
    """
    intersection = np.asarray(intersection, dtype=np.float64)
    total = np.asarray(pred_area, dtype=np.float64) + np.asarray(truth_area, dtype=np.float64)
    return np.where(total == 0, 1.0, 2.0 * intersection / np.maximum(total, 1.0))


def dice(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """The competition's Dice of two 0/1 masks (bool or numbers 0 and 1): one number for two
    (H, W) masks, one per class for (4, H, W) stacks (any leading axes), 1 where both are empty.

    Raises:
        ValueError: masks of different shapes (quoted); NaN, infinite or other values than 0
            and 1 (probabilities, a 0/255 image), naming ``a`` or ``b``.
        TypeError: masks that are not numbers.
    """
    fix = "threshold first, e.g. probs >= 0.5 or mask > 0"
    a, b = (check_numbers(m, name, binary=True, fix=fix) != 0 for m, name in ((a, "a"), (b, "b")))
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"dice needs two masks of one shape (H, W) or (..., H, W); got {a.shape} and {b.shape}")
    score = dice_score((a & b).sum((-2, -1)), a.sum((-2, -1)), b.sum((-2, -1)))
    return float(score) if score.ndim == 0 else score


@dataclass(frozen=True)
class PairStats:
    """Per-pair statistics, arrays of shape (n_images, n_classes)."""

    images: list[str]
    intersection: np.ndarray
    pred_area: np.ndarray
    truth_area: np.ndarray

    def dice(self) -> np.ndarray:
        """Dice per pair, 1 where both masks are empty."""
        return dice_score(self.intersection, self.pred_area, self.truth_area)

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
    truth = truth.loc[images, list(active().classes)].to_numpy()
    pred = pred.loc[images, list(active().classes)].to_numpy()
    shape = (len(images), len(active().classes))
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
    table = {c: float(dice[:, k].mean()) for k, c in enumerate(active().classes)}
    table["mean"] = float(dice.mean())
    return table


def accuracy(probs: np.ndarray, labels: np.ndarray, threshold: float | np.ndarray = 0.5) -> np.ndarray:
    """Per-class accuracy of ``probs >= threshold`` against 0/1 ``labels`` (n, n_classes)."""
    return ((probs >= threshold) == (labels > 0)).mean(axis=0)


def roc_auc(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class ROC AUC of ``probs`` against 0/1 ``labels`` (n, n_classes); NaN for a class
    whose labels are all alike (no AUC exists)."""
    from sklearn.metrics import roc_auc_score

    truth = np.asarray(labels) > 0
    return np.array([roc_auc_score(truth[:, k], probs[:, k]) if 0 < truth[:, k].sum() < len(truth) else np.nan
                     for k in range(truth.shape[1])])
