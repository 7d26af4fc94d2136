"""``predict-seg``: the segmentation model's masks as a Kaggle CSV, with tuned post-processing.

Probabilities are streamed from the model, resized to the submission size (350 x 525) on the
device and kept as uint8 per pixel. Post-processing is a per-class pixel threshold and a
per-class minimum connected-component size. On the validation split both are tuned on Kaggle
Dice (one connected-components pass per threshold serves every minimum size) and saved in the
run as ``seg_postprocess.json``; the test split then uses them.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pandas as pd
import torch

from cloudpipe.competition import CLASSES, CSV_COLUMNS, SUBMISSION_SHAPE, join_label
from cloudpipe.data import TEST_IMAGES, TRAIN_IMAGES, list_test_images, require_dir
from cloudpipe.devices import resolve_device
from cloudpipe.errors import CloudpipeError
from cloudpipe.infer import load_run, stream_probs
from cloudpipe.masks import remove_small_components, resize_nearest
from cloudpipe.outputs import check_output, write_csv, write_text
from cloudpipe.rle import mask2rle, rle2mask
from cloudpipe.runs import validation_parts

POSTPROCESS_JSON = "seg_postprocess.json"
THRESHOLD_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_SIZE_GRID = (0, 500, 1000, 2500, 5000, 10000)  # pixels at 350 x 525, as top solutions used


@dataclass(frozen=True)
class PostProcess:
    """Per-class pixel threshold and minimum component size (pixels at the mask size)."""

    threshold: dict[str, float]
    min_size: dict[str, int]

    @classmethod
    def default(cls) -> PostProcess:
        return cls({c: 0.5 for c in CLASSES}, {c: 0 for c in CLASSES})

    def apply(self, probs: np.ndarray, k: int) -> np.ndarray:
        """0/1 mask of class ``k`` from its uint8 probabilities (H, W)."""
        cls = CLASSES[k]
        return remove_small_components(binarize(probs, self.threshold[cls]), self.min_size[cls])

    def to_json(self) -> str:
        return json.dumps({"threshold": self.threshold, "min_size": self.min_size}, indent=2)

    @classmethod
    def load(cls, path: Path) -> PostProcess:
        try:
            data = json.loads(Path(path).read_text())
            return cls({c: float(data["threshold"][c]) for c in CLASSES}, {c: int(data["min_size"][c]) for c in CLASSES})
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CloudpipeError(f"not a valid post-processing file ({type(err).__name__}: {err})", path=path) from None


def binarize(probs: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 probabilities (0..255) -> 0/1 mask of ``p >= threshold``."""
    return (probs >= round(threshold * 255)).astype(np.uint8)


def sweep_stats(probs: np.ndarray, truth: np.ndarray, thresholds=THRESHOLD_GRID, min_sizes=MIN_SIZE_GRID) -> tuple[np.ndarray, np.ndarray]:
    """Intersection and predicted area of one (image, class) for every (threshold, min size).

    Returns:
        Two int64 arrays of shape (len(thresholds), len(min_sizes)).
    """
    inter = np.zeros((len(thresholds), len(min_sizes)), np.int64)
    area = np.zeros_like(inter)
    sizes = np.asarray(min_sizes)
    truth = truth.astype(bool)
    for ti, t in enumerate(thresholds):
        binary = binarize(probs, t)
        if not binary.any():
            continue
        count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        comp_area = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
        comp_area[0] = 0  # background
        comp_inter = np.bincount(labels[truth], minlength=count).astype(np.int64)
        comp_inter[0] = 0
        keep = comp_area[None, :] >= np.maximum(sizes, 1)[:, None]  # (M, components)
        inter[ti] = keep @ comp_inter
        area[ti] = keep @ comp_area
    return inter, area


def choose_postprocess(inter: np.ndarray, area: np.ndarray, truth_area: np.ndarray) -> tuple[PostProcess, np.ndarray]:
    """Best (threshold, min size) per class on mean Dice; ties go to the first grid point.

    Args:
        inter, area: (n, 4, T, M) sweep statistics; truth_area: (n, 4).

    Returns:
        The choice and the mean Dice grid (4, T, M).
    """
    total = area + truth_area[:, :, None, None]
    dice = np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1)).mean(axis=0)
    threshold, min_size = {}, {}
    for k, cls in enumerate(CLASSES):
        ti, mi = np.unravel_index(np.argmax(dice[k]), dice[k].shape)
        threshold[cls], min_size[cls] = THRESHOLD_GRID[ti], MIN_SIZE_GRID[mi]
    return PostProcess(threshold, min_size), dice


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
            text += f"; validation Dice {self.default_dice:.4f} at 0.5/no min size -> {self.tuned_dice:.4f} tuned"
        return text


def tune_postprocess(store: np.ndarray, names: list[str], rles: pd.DataFrame, mask_shape: tuple[int, int]) -> tuple[PostProcess, np.ndarray]:
    """Grid-search threshold x min size per class on the Dice of the stored probabilities
    against the truth masks (RLE at ``mask_shape``, resized to the submission size)."""
    n, grid = len(names), (len(THRESHOLD_GRID), len(MIN_SIZE_GRID))
    inter = np.zeros((n, len(CLASSES), *grid), np.int64)
    area = np.zeros_like(inter)
    truth_area = np.zeros((n, len(CLASSES)), np.int64)
    truth_rles = rles.loc[names, list(CLASSES)].to_numpy()
    for i in range(n):
        for k in range(len(CLASSES)):
            truth = resize_nearest(rle2mask(truth_rles[i, k], mask_shape), SUBMISSION_SHAPE)
            truth_area[i, k] = int(truth.sum())
            inter[i, k], area[i, k] = sweep_stats(store[i, k], truth)
    return choose_postprocess(inter, area, truth_area)


def predict_segmentation(
    run_dir: Path,
    data_dir: Path,
    split: Literal["val", "test"],
    out: Path,
    *,
    tta: bool = False,
    batch_size: int = 8,
    device: str = "auto",
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
) -> SegPrediction:
    """Write the segmentation model's masks for the validation or test images as a Kaggle CSV.

    ``val``: the run's validation images (out-of-fold with folds), post-processing tuned on
    their Dice and saved to ``RUN_DIR/seg_postprocess.json``. ``test``: the test images in
    ``sample_submission.csv`` order, all models averaged, the saved post-processing applied
    (threshold 0.5 and no minimum size when the run has none).
    """
    data_dir = require_dir(data_dir)
    out = check_output(out, overwrite=overwrite)
    dev = resolve_device(device)
    started = time.perf_counter()
    if split == "test":
        saved = Path(run_dir) / POSTPROCESS_JSON  # read before inference: a bad file fails fast
        post = PostProcess.load(saved) if saved.exists() else PostProcess.default()
        parts = [(load_run(run_dir, "segmentation", dev), list_test_images(data_dir), data_dir / TEST_IMAGES)]
    else:
        data, folders = validation_parts(run_dir, data_dir, "segmentation")
        parts = [(load_run(folder, "segmentation", dev), images, data_dir / TRAIN_IMAGES) for folder, images in folders]
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        names, store = _predict_to_store(parts, Path(tmp), dev, batch_size, workers, tta, progress)
        speed = len(names) / (time.perf_counter() - started)
        dice = None
        if split == "val":
            post, dice = tune_postprocess(store, names, data.rles, data.image_shape)
            write_text(post.to_json(), Path(run_dir) / POSTPROCESS_JSON)
        result = SegPrediction(out, len(names), post, speed)
        if dice is not None:
            result.default_dice = float(dice[:, THRESHOLD_GRID.index(0.5), 0].mean())
            result.tuned_dice = float(np.mean([dice[k].max() for k in range(len(CLASSES))]))
        _write_masks(names, store, post, out)
        del store  # close the memory map before its folder goes
    return result


def _predict_to_store(parts, tmp: Path, device, batch_size, workers, tta, progress) -> tuple[list[str], np.memmap]:
    """Stream every part through its model into a uint8 memory map (n, 4, 350, 525) on disk,
    so memory stays flat however many images there are."""
    names = [name for _, images, _ in parts for name in images]
    store = np.lib.format.open_memmap(tmp / "probs.npy", mode="w+", dtype=np.uint8, shape=(len(names), len(CLASSES), *SUBMISSION_SHAPE))
    offset = 0
    for run, images, folder in parts:
        paths = [folder / name for name in images]
        for indices, probs in stream_probs(run, paths, device=device, batch_size=batch_size, workers=workers, tta=tta,
                                           amp=run.config.amp, progress=progress, desc="predict-seg"):
            small = torch.nn.functional.interpolate(probs, size=SUBMISSION_SHAPE, mode="bilinear", align_corners=False)
            store[offset + indices] = (small * 255).round().to(torch.uint8).cpu().numpy()
        offset += len(images)
    return names, store


def _write_masks(names: list[str], store: np.ndarray, post: PostProcess, out: Path) -> None:
    """Post-process and encode every mask; write the CSV atomically (image-major, class order)."""
    rows = [(join_label(name, c), mask2rle(post.apply(store[i, k], k))) for i, name in enumerate(names) for k, c in enumerate(CLASSES)]
    write_csv(pd.DataFrame(rows, columns=list(CSV_COLUMNS)), out)
