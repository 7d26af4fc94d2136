"""``evaluate``: the Kaggle Dice of a submission file against a truth file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.metric import dice_table, pair_stats
from cloudpipe.core.profile import active
from cloudpipe.core.rle import check_shape, parse_rle
from cloudpipe.data.kaggle import (
    TRAIN_CSV,
    TRAIN_IMAGES,
    read_mask_csv,
    read_train,
    require_same_images,
    to_wide,
    train_image_shape,
    validate_rle_column,
)


@dataclass
class Evaluation:
    """The Dice table of the images a prediction covers, and how many of the truth's it is."""

    table: dict[str, float]  # class -> mean Dice, and "mean"
    scored: int  # images scored: those of the prediction
    truth_images: int  # images in the truth file


def evaluate_files(truth_csv: Path, pred_csv: Path, truth_shape: tuple[int, int] | None = None,
                   pred_shape: tuple[int, int] | None = None) -> Evaluation:
    """Kaggle Dice of a submission file against a truth file (masks at ``truth_shape``, None:
    :func:`default_truth_shape`), per class and ``"mean"``, over the images of the prediction;
    the files are checked by :func:`read_truth_and_prediction`."""
    truth_shape = truth_shape or default_truth_shape(Path(truth_csv))
    pred_shape = pred_shape or active().submission_size
    truth, pred = read_truth_and_prediction(truth_csv, pred_csv, truth_shape, pred_shape)
    table = dice_table(pair_stats(truth, pred, truth_shape, pred_shape).dice())
    return Evaluation(table, len(pred), len(truth))


def default_truth_shape(truth_csv: Path) -> tuple[int, int]:
    """The mask size of a truth file: a data folder's ``train.csv`` is at its training images'
    size (whatever it is: the masks were drawn on them), anything else (a test truth such as
    ``synth``'s ``test_truth.csv``) at the profile's submission size."""
    if _is_train_csv(truth_csv):
        return train_image_shape(truth_csv.parent)
    return active().submission_size


def _is_train_csv(path: Path) -> bool:
    """Whether ``path`` is a data folder's ``train.csv`` (one beside ``train_images/``)."""
    return path.name == TRAIN_CSV and (path.parent / TRAIN_IMAGES).is_dir()


def read_truth(truth_csv: Path, shape: tuple[int, int]) -> pd.DataFrame:
    """A truth file as a long frame, every RLE valid at ``shape``: a data folder's ``train.csv`` as
    its training data (:func:`~cloudpipe.data.kaggle.read_train`: a present-only file holds every
    image of ``train_images/``), any other as a mask CSV."""
    if not _is_train_csv(Path(truth_csv)):
        return read_mask_csv(truth_csv, shape=shape)
    frame = read_train(Path(truth_csv).parent)
    validate_rle_column(frame, check_shape(shape), Path(truth_csv))
    return frame


def read_truth_and_prediction(truth_csv: Path, pred_csv: Path, truth_shape: tuple[int, int],
                              pred_shape: tuple[int, int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both mask files as wide frames (one row per image), checked: valid RLE at their
    shapes, neither read at a larger size than it was written at, and every prediction image
    in the truth."""
    known = (truth_shape, pred_shape, active().submission_size, active().image_size)
    truth_frame = read_truth(truth_csv, truth_shape)
    _check_shape(truth_frame, truth_csv, truth_shape, known, "--truth-shape")
    pred_frame = read_mask_csv(pred_csv, shape=pred_shape)
    _check_shape(pred_frame, pred_csv, pred_shape, known, "--pred-shape")
    truth, pred = to_wide(truth_frame), to_wide(pred_frame)
    covered = [i for i in pred.index if i in truth.index]  # so that only extra images are named
    require_same_images(covered, list(pred.index), f"{pred_csv}: compared with {truth_csv}, it",
                        "; --truth must hold their masks (test images: --truth test_truth.csv, e.g. synth's or clouds350's)")
    return truth, pred


def _check_shape(frame: pd.DataFrame, path: Path, shape: tuple[int, int], known: tuple[tuple[int, int], ...],
                 option: str) -> None:
    """Catch masks read at a larger size than they were written at: RLE that is valid for a
    small mask is also valid for a larger one, and would silently score wrong. When every
    mask ends inside the first H*W pixels of a smaller ``known`` shape (the smallest such),
    the file is taken to be at that size (a real mask set at full size never lies entirely in
    its first few columns)."""
    smaller = sorted({s for s in known if s[0] * s[1] < shape[0] * shape[1]}, key=lambda s: s[0] * s[1])
    if not smaller:
        return
    ends = [int(s[-1] + n[-1]) for s, n in (parse_rle(r, shape) for r in frame["EncodedPixels"] if r)]
    if len(ends) < 8:
        return
    fits = [s for s in smaller if max(ends) <= s[0] * s[1]]
    if fits:
        h, w = fits[0]
        # No size is suggested: a wrong one would score without complaint (masks drawn at 64 x 96
        # also fit in 350 x 525), and only the file's maker knows the real one.
        raise CloudpipeError(f"every mask fits in the first {h * w} pixels ({h}x{w} would hold them): the masks look "
                             f"smaller than {shape[0]}x{shape[1]}; pass {option} H W with their real size (the size of "
                             f"the images they were drawn on, or {' '.join(map(str, active().submission_size))} for a "
                             "submission)", path=path)
