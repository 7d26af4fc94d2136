"""``predict-seg``: the segmentation model's masks as a Kaggle CSV, with tuned post-processing.

Probabilities are streamed from the model, resized to the submission size (350 x 525) on the
device and kept as uint8 per pixel in a memory map, so memory stays flat. Post-processing is
the ordered list of steps of :mod:`cloudpipe.algorithms.postprocess`: on the validation split
it is tuned on Kaggle Dice and saved in the run as ``seg_postprocess.json``; the test split
then uses it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from cloudpipe.algorithms.postprocess import (
    PostProcess,
    Step,
    choose,
    default_index,
    grid_stats,
)
from cloudpipe.core.competition import (
    CLASSES,
    CSV_COLUMNS,
    SUBMISSION_SHAPE,
    join_label,
)
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.masks import resize_nearest
from cloudpipe.core.rle import mask2rle, rle2mask
from cloudpipe.data.kaggle import (
    SAMPLE_SUBMISSION_CSV,
    TEST_IMAGES,
    TRAIN_CSV,
    TRAIN_IMAGES,
    list_test_images,
    require_dir,
)
from cloudpipe.data.outputs import claim_output, write_csv, write_text
from cloudpipe.data.runfolder import CONFIG_YAML, POSTPROCESS_JSON, SPLITS_CSV, read_json
from cloudpipe.engine.devices import resolve_device
from cloudpipe.engine.infer import load_run, stream_probs
from cloudpipe.engine.settings import InferenceSettings
from cloudpipe.pipeline.validation import validation_sets


def load_postprocess(path: Path) -> PostProcess:
    """Read a ``seg_postprocess.json``; errors name the file."""
    try:
        return PostProcess.from_dict(read_json(path, "post-processing"))
    except CloudpipeError as err:
        raise CloudpipeError(str(err).removeprefix(f"{path}: "), path=path) from None


def tune_postprocess(store: np.ndarray, names: list[str], rles: pd.DataFrame, mask_shape: tuple[int, int],
                     steps: tuple[Step, ...] = PostProcess().steps) -> tuple[PostProcess, np.ndarray]:
    """Search every combination of the steps' grids per class on the Dice of the stored
    probabilities against the truth masks (RLE at ``mask_shape``, resized to the submission
    size).

    Returns:
        The choice and the mean Dice of every combination, (4, *grid).
    """
    grid = tuple(len(s.grid) for s in steps)
    n = len(names)
    inter = np.zeros((n, len(CLASSES), *grid), np.int64)
    area = np.zeros_like(inter)
    truth_area = np.zeros((n, len(CLASSES)), np.int64)
    truth_rles = rles.loc[names, list(CLASSES)].to_numpy()
    for i in range(n):
        for k in range(len(CLASSES)):
            truth = resize_nearest(rle2mask(truth_rles[i, k], mask_shape), SUBMISSION_SHAPE)
            truth_area[i, k] = int(truth.sum())
            inter[i, k], area[i, k] = grid_stats(steps, store[i, k], truth)
    return choose(steps, inter, area, truth_area)


@dataclass
class SegPrediction:
    """What :func:`predict_segmentation` wrote."""

    out: Path
    images: int
    postprocess: PostProcess
    images_per_second: float
    tuned_dice: float | None = None
    default_dice: float | None = None

    def line(self) -> str:
        text = f"{self.images} images at {self.images_per_second:.1f} img/s -> {self.out}"
        if self.tuned_dice is not None:
            before = f"{self.default_dice:.4f} with the steps' defaults -> " if self.default_dice is not None else ""
            text += f"; validation Dice {before}{self.tuned_dice:.4f} tuned"
        return text


def predict_segmentation(
    run_dir: Path,
    data_dir: Path,
    split: Literal["val", "test"],
    out: Path,
    *,
    settings: InferenceSettings = InferenceSettings(batch_size=8),
    overwrite: bool = False,
) -> SegPrediction:
    """Write the segmentation model's masks for the validation or test images as a Kaggle CSV.

    ``val``: the run's validation images (out-of-fold with folds), post-processing tuned on
    their Dice and saved to ``RUN_DIR/seg_postprocess.json``. ``test``: the test images in
    ``sample_submission.csv`` order, all models averaged, the saved post-processing applied
    (the steps' defaults when the run has none).
    """
    data_dir = require_dir(data_dir)
    run = Path(run_dir)  # what the command reads of the run: its models, config, split and post-processing
    run_files = [*run.rglob("*.pt"), *run.rglob(CONFIG_YAML), *run.rglob(SPLITS_CSV), run / POSTPROCESS_JSON]
    with claim_output(out, overwrite=overwrite, inputs=[data_dir / SAMPLE_SUBMISSION_CSV, data_dir / TRAIN_CSV, *run_files],
                      input_dirs=[data_dir / TRAIN_IMAGES, data_dir / TEST_IMAGES]) as out:
        return _predict_and_write(run_dir, data_dir, split, out, settings)


def _predict_and_write(run_dir: Path, data_dir: Path, split: Literal["val", "test"], out: Path,
                       settings: InferenceSettings) -> SegPrediction:
    """The work of :func:`predict_segmentation` once its output is checked and locked."""
    device = resolve_device(settings.device)
    started = time.perf_counter()
    if split == "test":
        saved = Path(run_dir) / POSTPROCESS_JSON  # read before inference: a bad file fails fast
        post = load_postprocess(saved) if saved.exists() else PostProcess()
        parts = [(load_run(run_dir, "segmentation", device), list_test_images(data_dir), data_dir / TEST_IMAGES)]
    else:
        data, splits = validation_sets(run_dir, data_dir, "segmentation")
        parts = [(load_run(s.folder, "segmentation", device), s.val, data_dir / TRAIN_IMAGES) for s in splits]
    names, store = _predict_to_store(parts, out.parent, device, settings)
    speed = len(names) / (time.perf_counter() - started)
    dice = None
    if split == "val":
        post, dice = tune_postprocess(store, names, data.rles, data.image_shape)
        write_text(json.dumps(post.to_dict(), indent=2) + "\n", Path(run_dir) / POSTPROCESS_JSON)
    result = SegPrediction(out, len(names), post, speed)
    if dice is not None:
        at_default = default_index(post.steps)
        if at_default is not None:
            result.default_dice = float(dice[(slice(None), *at_default)].mean())
        result.tuned_dice = float(np.mean([dice[k].max() for k in range(len(CLASSES))]))
    _write_masks(names, store, post, out)
    return result


def probability_store(folder: Path, shape: tuple[int, ...]) -> np.memmap:
    """A uint8 memory map of ``shape`` in a file of ``folder`` that has no name: the file is
    unlinked as soon as it is made (or never named, with ``O_TMPFILE``), so its space returns
    when the map is dropped or the process ends, even by ``kill -9``. Its space is allocated
    up front, so a full disk fails here rather than as a SIGBUS mid-run.

    Raises:
        CloudpipeError: the file cannot be made or sized (e.g. no space left on device).
    """
    try:
        with tempfile.TemporaryFile(dir=folder) as file:  # the map keeps its own handle
            os.posix_fallocate(file.fileno(), 0, math.prod(shape))
            return np.memmap(file, dtype=np.uint8, mode="w+", shape=shape)
    except OSError as err:
        raise CloudpipeError(f"cannot make the temporary probability store ({err.strerror or err})", path=folder) from None


def _predict_to_store(parts, folder: Path, device: torch.device, settings: InferenceSettings) -> tuple[list[str], np.memmap]:
    """Stream every part through its model into a uint8 memory map (n, 4, 350, 525) on disk
    in ``folder``, so memory stays flat however many images there are."""
    names = [name for _, images, _ in parts for name in images]
    store = probability_store(folder, (len(names), len(CLASSES), *SUBMISSION_SHAPE))
    offset = 0
    for run, images, folder in parts:
        paths = [folder / name for name in images]
        for indices, probs in stream_probs(run, paths, device, settings, desc="predict-seg"):
            small = torch.nn.functional.interpolate(probs, size=SUBMISSION_SHAPE, mode="bilinear", align_corners=False)
            store[offset + indices] = (small * 255).round().to(torch.uint8).cpu().numpy()
        offset += len(images)
    return names, store


def _write_masks(names: list[str], store: np.ndarray, post: PostProcess, out: Path) -> None:
    """Post-process and encode every mask; write the CSV atomically (image-major, class order)."""
    rows = [(join_label(name, c), mask2rle(post.apply(store[i, k], k)))
            for i, name in enumerate(names) for k, c in enumerate(CLASSES)]
    write_csv(pd.DataFrame(rows, columns=list(CSV_COLUMNS)), out)
