"""``cloudpipe show``: an image with its truth and/or predicted masks, per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.masks import decode_masks
from cloudpipe.core.metric import dice
from cloudpipe.core.profile import active
from cloudpipe.data.images import jpeg_size, read_image, reduction_for
from cloudpipe.data.kaggle import TRAIN_CSV, TRAIN_IMAGES, data_inputs, find_image, require_dir, to_wide
from cloudpipe.data.outputs import Inputs
from cloudpipe.plots import figure_writer, overlay_figure


def _masks(csv: Path, image: str, shape: tuple[int, int], size: tuple[int, int], required: bool = True) -> np.ndarray | None:
    """The masks of ``image`` in a mask CSV (at ``shape``) at ``size``; None when it has no rows
    for it (refused when ``required``)."""
    from cloudpipe.pipeline.evaluate import read_truth

    wide = to_wide(read_truth(csv, shape))
    if image in wide.index:
        return decode_masks(wide.loc[image, list(active().classes)], shape, size)
    if required:
        raise CloudpipeError(f"has no rows for image {image!r}", path=csv)
    return None


def show_image(data_dir: Path, image: str | Path, out: Path, *, pred: Path | None = None,
               mask_shape: tuple[int, int] | None = None, truth_csv: Path | None = None,
               truth_shape: tuple[int, int] | None = None, overwrite: bool = False) -> Path:
    """Overlay ``image`` (a file name in the data folder's image folders, or a path to the JPEG)
    at the submission size with its truth and/or the masks of ``pred`` (at ``mask_shape``),
    each class's Dice in its title when both are drawn. The truth is ``truth_csv`` (masks at
    ``truth_shape``, default :func:`~cloudpipe.pipeline.evaluate.default_truth_shape`), else
    the data folder's ``train.csv`` for a train image.

    Raises:
        CloudpipeError: unknown image, an image with neither truth nor prediction, bad CSVs,
            an output that may not be written.
    """
    mask_shape = mask_shape or active().submission_size
    from cloudpipe.engine.runner import Plan, Runner
    from cloudpipe.pipeline.evaluate import default_truth_shape

    data_dir = require_dir(data_dir)
    given = Path(image) if Path(image).name != str(image) else None  # an image path: an input too
    with Runner.start() as run:
        run.claim(lambda: (Plan(data_inputs(data_dir) | Inputs.of(pred, truth_csv, given), [out], overwrite=overwrite), None))
        if given is not None and not given.is_file():
            raise CloudpipeError("no such image file", path=given)
        path = given or find_image(data_dir, str(image))  # a bare name: in train_images/ or test_images/
        image, source = path.name, jpeg_size(path)
        size = active().submission_size
        truth = None
        if truth_csv is not None:
            truth = _masks(truth_csv, image, truth_shape or default_truth_shape(Path(truth_csv)), size)
        elif path.parent.name == TRAIN_IMAGES and (data_dir / TRAIN_CSV).is_file():
            truth = _masks(data_dir / TRAIN_CSV, image, source, size, required=False)
        predicted = None if pred is None else _masks(pred, image, mask_shape, size)
        if truth is None and predicted is None:
            raise CloudpipeError(f"no truth for test image {image!r}: pass --pred SUB.csv to show predictions "
                                 "(or --truth TRUTH.csv, e.g. synth's test_truth.csv)")
        scores = dice(predicted, truth) if truth is not None and predicted is not None else None
        pixels = read_image(path, size, reduction_for(source, size))
        run.write({out: figure_writer(overlay_figure(pixels, truth=truth, pred=predicted, title=image, dice=scores))})
    return Path(out)
