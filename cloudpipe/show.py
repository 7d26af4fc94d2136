"""``cloudpipe show``: an image with its truth and/or predicted masks, per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloudpipe.core.competition import CLASSES, SUBMISSION_SHAPE
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.masks import decode_masks
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


def show_image(data_dir: Path, image: str, out: Path, *, pred: Path | None = None,
               mask_shape: tuple[int, int] = SUBMISSION_SHAPE, overwrite: bool = False) -> Path:
    """Overlay a train or test image with its truth (``train.csv``) and/or the masks of a
    submission (``pred``, masks at ``mask_shape``); shown at the submission size.

    Raises:
        CloudpipeError: unknown image, an image with neither truth nor prediction, bad CSVs,
            an output that is an input or is being written by another process.
    """
    from cloudpipe.engine.runner import Plan, Runner

    data_dir = require_dir(data_dir)
    with Runner.start() as run:
        run.claim(lambda: (Plan(data_inputs(data_dir) | Inputs.of(pred), [out], overwrite=overwrite), None))
        path = find_image(data_dir, image)
        source = jpeg_size(path)
        size = SUBMISSION_SHAPE
        truth = None
        if path.parent.name == TRAIN_IMAGES and (data_dir / TRAIN_CSV).is_file():
            truth = _masks(read_mask_csv(data_dir / TRAIN_CSV, shape=source), image, source, size)
        predicted = None
        if pred is not None:
            predicted = _masks(read_mask_csv(pred, shape=mask_shape), image, mask_shape, size)
            if predicted is None:
                raise CloudpipeError(f"has no rows for image {image!r}", path=pred)
        if truth is None and predicted is None:
            raise CloudpipeError(f"no truth for test image {image!r}: pass --pred SUB.csv to show predictions")
        pixels = read_image(path, size, reduction_for(source, size))
        run.write({out: figure_writer(overlay_figure(pixels, truth=truth, pred=predicted, title=image))})
    return Path(out)
