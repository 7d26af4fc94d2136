"""``evaluate``: the Kaggle Dice of a submission file against a truth file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.metric import dice_table, pair_stats
from cloudpipe.core.rle import parse_rle
from cloudpipe.data.kaggle import read_mask_csv, require_same_images, to_wide


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
