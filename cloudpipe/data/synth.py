"""Synthetic data in the Kaggle layout, learnable by both stages.

Each class of the active profile paints a visually distinct texture into random rectangles
(the competition's labels are blocky too): the first four classes (clouds' Fish, Flower, Gravel,
Sugar) diagonal stripes, large bright cells, fine grain, a flat bright haze; further classes
stripes of other angles and frequencies. Textures are defined relative to the image width, so
they survive resizing. Some images have no class, some several; about half have a black no-data
band (where the synthetic masks are cleared). Deterministic for a given seed. The CSVs are in
the profile's layouts; a folder of another profile than clouds says so in ``profile.yaml``.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from cloudpipe.core.constants import MAX_PIXELS
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.masks import resize_nearest
from cloudpipe.core.profile import active, join_label
from cloudpipe.core.rle import mask2rle
from cloudpipe.data.kaggle import (
    LABEL_COLUMNS,
    SAMPLE_SUBMISSION_CSV,
    TEST_IMAGES,
    TRAIN_CSV,
    TRAIN_IMAGES,
    to_layout,
)
from cloudpipe.data.outputs import build_folder, claim_output
from cloudpipe.data.profiles import write_folder_profile

TEST_TRUTH_CSV = "test_truth.csv"
PRESENCE_PROBABILITY = 0.4


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`make_dataset` wrote."""

    out_dir: Path
    train: int
    test: int
    shape: tuple[int, int]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid, upsampled smoothly."""
    coarse = rng.random((max(2, cells * shape[0] // shape[1]), cells), dtype=np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(0, 1)


_STRIPES = ((0.0, 10.0), (90.0, 10.0), (135.0, 14.0), (0.0, 22.0), (90.0, 22.0), (22.5, 6.0), (67.5, 6.0),
            (112.5, 6.0), (157.5, 6.0), (45.0, 5.0), (135.0, 5.0))
"""The (angle in degrees, stripes per image width) of the stripes of classes beyond the fourth."""


def _texture(k: int, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Grey-level texture (float32, 0..255) of the class at index ``k`` over the whole image."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / w
    phase = rng.random() * 2 * np.pi
    if k == 0:  # diagonal stripes (clouds' Fish)
        return 150 + 70 * np.sin(2 * np.pi * 14 * (x + y) + phase)
    if k == 1:  # large bright cells on a dark grid (Flower)
        cells = np.sin(2 * np.pi * 8 * x + phase) * np.sin(2 * np.pi * 8 * y + phase)
        return 110 + 130 * np.clip(cells, 0, 1)
    if k == 2:  # fine grain (Gravel)
        grain = rng.random((max(2, h * 60 // w), 60), dtype=np.float32)
        return 80 + 150 * cv2.resize(grain, (w, h), interpolation=cv2.INTER_NEAREST)
    if k == 3:
        return 215 + 15 * _smooth_noise(rng, shape, 6)  # flat bright haze (Sugar)
    turn, index = divmod(k - 4, len(_STRIPES))
    angle, frequency = _STRIPES[index]
    a = np.deg2rad(angle)  # further classes: stripes of another angle and width, brighter with each turn
    return 120 + 20 * (turn % 4) + 80 * np.sin(2 * np.pi * frequency * (x * np.cos(a) + y * np.sin(a)) + phase)


def _rectangle(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[slice, slice]:
    h, w = shape
    rh, rw = int(h * rng.uniform(0.25, 0.6)), int(w * rng.uniform(0.2, 0.5))
    top, left = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
    return slice(top, top + rh), slice(left, left + rw)


def make_image(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic RGB image, uint8 (H, W, 3), and its class masks, 0/1 uint8 (4, H, W)."""
    h, w = shape
    canvas = 30 + 50 * _smooth_noise(rng, shape, 5)
    masks = np.zeros((len(active().classes), h, w), dtype=np.uint8)
    present = [k for k in range(len(active().classes)) if rng.random() < PRESENCE_PROBABILITY]
    for k in rng.permutation(present):
        texture = _texture(int(k), rng, shape)
        for _ in range(int(rng.integers(1, 3))):
            rows, cols = _rectangle(rng, shape)
            canvas[rows, cols] = texture[rows, cols]
            masks[:, rows, cols] = 0  # a later region hides what was painted below it
            masks[k, rows, cols] = 1
    canvas += rng.normal(0, 6, size=shape).astype(np.float32)
    if rng.random() < 0.5:  # black no-data band, slanted, ~10-14% of the width
        y, x = np.mgrid[0:h, 0:w]
        left = rng.uniform(0, 0.85) * w + (y * rng.uniform(-0.1, 0.1))
        band = (x >= left) & (x < left + rng.uniform(0.10, 0.14) * w)
        canvas[band] = 0
        masks[:, band] = 0
    grey = canvas.clip(0, 255).astype(np.uint8)
    tint = np.array([0.92, 0.97, 1.0], dtype=np.float32)  # a bluish cast, as in the real images
    image = (grey[..., None] * tint).astype(np.uint8)
    return image, masks


def _names(rng: np.random.Generator, count: int) -> list[str]:
    """Unique Kaggle-style file names (7 hex digits)."""
    ids = rng.choice(16**7, size=count, replace=False)
    return sorted(f"{i:07x}.jpg" for i in ids)


def _label_rows(name: str, masks: np.ndarray) -> list[tuple[str, str, str, str]]:
    """The long frame rows (:data:`~cloudpipe.data.kaggle.LABEL_COLUMNS`, image, class) of one image's masks."""
    return [(join_label(name, c), mask2rle(masks[k]), name, c) for k, c in enumerate(active().classes)]


def _long(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[*LABEL_COLUMNS, "image", "class_name"])


def make_dataset(
    out_dir: Path,
    *,
    train: int = 100,
    test: int = 20,
    shape: tuple[int, int] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> SynthSummary:
    """Write a synthetic dataset of the active profile in the Kaggle layout: ``train.csv`` (masks
    at the image size, in the profile's ``train_csv`` layout), ``sample_submission.csv`` (``1 1``
    masks), ``train_images/``, ``test_images/`` and ``test_truth.csv`` (test masks at the
    submission size, every pair, for ``cloudpipe evaluate``), both in its ``submission_csv``
    layout, and ``profile.yaml`` unless the profile is clouds. ``shape``: the images' (H, W),
    the profile's ``image_size`` when None.

    The folder is built whole under its lock, as the runner builds every folder
    (:func:`~cloudpipe.data.outputs.build_folder`; this layer lies below the runner and never
    runs under ``torchrun``): ``out_dir`` with files in it is replaced only with ``overwrite``
    and only when ``synth`` made it. Invalid sizes, such an ``out_dir`` or a failed write are
    a CloudpipeError.
    """
    shape = shape or active().image_size
    out_dir = Path(out_dir)
    if train < 2 or test < 1:
        raise CloudpipeError(f"need at least 2 train and 1 test images, got --train {train} --test {test}")
    if min(shape) < 16:
        raise CloudpipeError(f"images must be at least 16x16, got {shape[0]}x{shape[1]}")
    if shape[0] * shape[1] > MAX_PIXELS:
        raise CloudpipeError(f"images of {shape[0]}x{shape[1]} are more than {MAX_PIXELS:,} pixels (16 competition images)")
    if seed < 0:
        raise CloudpipeError(f"--seed must be 0 or more, got {seed}")
    with claim_output(out_dir, overwrite=overwrite, made_by="synth"):
        build_folder(out_dir, lambda folder: _write_dataset(folder, train, test, shape, seed, progress), "synth",
                     overwrite=overwrite)
    return SynthSummary(out_dir, train, test, shape)


def _write_dataset(out_dir: Path, train: int, test: int, shape: tuple[int, int], seed: int, progress: bool) -> None:
    """The work of :func:`make_dataset`: the dataset written into the empty ``out_dir``."""
    rng = np.random.default_rng(seed)
    names = _names(rng, train + test)
    order = rng.permutation(len(names))
    train_names = sorted(names[i] for i in order[:train])
    test_names = sorted(names[i] for i in order[train:])
    for folder in (TRAIN_IMAGES, TEST_IMAGES):
        (out_dir / folder).mkdir()
    train_rows: list[tuple[str, str, str, str]] = []
    truth_rows: list[tuple[str, str, str, str]] = []
    jobs = [(n, TRAIN_IMAGES) for n in train_names] + [(n, TEST_IMAGES) for n in test_names]
    for name, folder in tqdm(jobs, desc="synth", unit="img", disable=not progress):
        image, masks = make_image(np.random.default_rng([seed, int(name[:7], 16)]), shape)
        if not cv2.imwrite(str(out_dir / folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise OSError(errno.EIO, f"cannot write image {folder}/{name}")
        if folder == TRAIN_IMAGES:
            train_rows += _label_rows(name, masks)
        else:
            small = np.stack([resize_nearest(m, active().submission_size) for m in masks])
            truth_rows += _label_rows(name, small)
    profile = active()
    to_layout(_long(train_rows), profile.train_csv).to_csv(out_dir / TRAIN_CSV, index=False)
    every_pair = profile.submission_csv.model_copy(update={"rows": "all"})  # images without masks stay listed
    to_layout(_long(truth_rows), every_pair).to_csv(out_dir / TEST_TRUTH_CSV, index=False)
    sample = [(join_label(n, c), "1 1", n, c) for n in test_names for c in profile.classes]
    to_layout(_long(sample), profile.submission_csv).to_csv(out_dir / SAMPLE_SUBMISSION_CSV, index=False)
    write_folder_profile(out_dir, profile)
