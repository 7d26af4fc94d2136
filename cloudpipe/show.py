"""``cloudpipe show``: an image with its truth and/or predicted masks, per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloudpipe.core.competition import CLASSES, SUBMISSION_SHAPE
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.masks import decode_masks
from cloudpipe.core.metric import dice
from cloudpipe.data.images import jpeg_size, read_image, reduction_for
from cloudpipe.data.kaggle import (
    TRAIN_CSV,
    TRAIN_IMAGES,
    data_inputs,
    find_image,
    read_mask_csv,
    require_dir,
    to_wide,
)
from cloudpipe.data.outputs import Inputs
from cloudpipe.plots import figure_writer, overlay_figure


def _masks(frame, image: str, shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray | None:
    wide = to_wide(frame)
    return decode_masks(wide.loc[image, list(CLASSES)], shape, size) if image in wide.index else None


def image_path(data_dir: Path, image: str | Path) -> Path:
    """The file of ``image``: a path to a JPEG as given, or a file name looked up in the data
    folder's ``train_images/`` and ``test_images/``.

    Raises:
        CloudpipeError: a path that is no file, a name in neither folder.
    """
    if Path(image).name != str(image):  # a path, not a bare name
        if not Path(image).is_file():
            raise CloudpipeError("no such image file", path=Path(image))
        return Path(image)
    return find_image(data_dir, str(image))


def show_image(data_dir: Path, image: str | Path, out: Path, *, pred: Path | None = None,
               mask_shape: tuple[int, int] = SUBMISSION_SHAPE, truth_csv: Path | None = None,
               truth_shape: tuple[int, int] | None = None, overwrite: bool = False) -> Path:
    """Overlay a train or test image with its truth and/or the masks of a submission (``pred``,
    masks at ``mask_shape``); shown at the submission size, with each class's Dice in its
    title when both are drawn.

    Args:
        image: a file name in the data folder's image folders, or a path to the JPEG.
        truth_csv: the truth masks (e.g. ``test_truth.csv`` for a test image); default the data
            folder's ``train.csv`` for a train image.
        truth_shape: mask size of ``truth_csv``; default as ``evaluate`` reads it
            (:func:`~cloudpipe.pipeline.evaluate.default_truth_shape`: 350 x 525 but for a data
            folder's ``train.csv``).

    Raises:
        CloudpipeError: unknown image, an image with neither truth nor prediction, bad CSVs,
            an output that is an input or is being written by another process.
    """
    from cloudpipe.engine.runner import Plan, Runner
    from cloudpipe.pipeline.evaluate import default_truth_shape

    data_dir = require_dir(data_dir)
    given = Path(image) if Path(image).name != str(image) else None  # an image path: an input too
    with Runner.start() as run:
        run.claim(lambda: (Plan(data_inputs(data_dir) | Inputs.of(pred, truth_csv, given), [out], overwrite=overwrite), None))
        path = image_path(data_dir, image)
        image, source = path.name, jpeg_size(path)
        size = SUBMISSION_SHAPE
        truth = None
        if truth_csv is not None:
            shape = truth_shape or default_truth_shape(Path(truth_csv))
            truth = _masks(read_mask_csv(truth_csv, shape=shape), image, shape, size)
            if truth is None:
                raise CloudpipeError(f"has no rows for image {image!r}", path=truth_csv)
        elif path.parent.name == TRAIN_IMAGES and (data_dir / TRAIN_CSV).is_file():
            truth = _masks(read_mask_csv(data_dir / TRAIN_CSV, shape=source), image, source, size)
        predicted = None
        if pred is not None:
            predicted = _masks(read_mask_csv(pred, shape=mask_shape), image, mask_shape, size)
            if predicted is None:
                raise CloudpipeError(f"has no rows for image {image!r}", path=pred)
        if truth is None and predicted is None:
            raise CloudpipeError(f"no truth for test image {image!r}: pass --pred SUB.csv to show predictions "
                                 "(or --truth TRUTH.csv, e.g. synth's test_truth.csv)")
        scores = dice(predicted, truth) if truth is not None and predicted is not None else None
        pixels = read_image(path, size, reduction_for(source, size))
        run.write({out: figure_writer(overlay_figure(pixels, truth=truth, pred=predicted, title=image, dice=scores))})
    return Path(out)
