"""``cloudpipe subset``: part of a Kaggle-layout data folder, as a data folder of its own.

The new folder is a complete Kaggle-layout folder holding copies (never links) of the chosen
images: ``train.csv`` and ``sample_submission.csv`` keep the chosen images' rows exactly as
they were, in their order and layout, ``test_truth.csv`` too when the source has one
(clouds350's, ``cloudpipe synth``'s), ``profile.yaml`` says the profile unless it is clouds,
and ``subset.yaml`` records the source, the counts and the seed. Every command reads it as it
reads the whole data.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import yaml

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.profile import active
from cloudpipe.data.kaggle import (
    PSEUDO_CSV,
    SAMPLE_SUBMISSION_CSV,
    TEST_IMAGES,
    TRAIN_CSV,
    TRAIN_IMAGES,
    data_inputs,
    mask_rows,
    read_train,
    require_dir,
)
from cloudpipe.data.outputs import Inputs
from cloudpipe.data.profiles import write_folder_profile
from cloudpipe.data.synth import TEST_TRUTH_CSV
from cloudpipe.engine.runner import Plan, Runner

SUBSET_YAML = "subset.yaml"
"""The record of a subset folder: its source, seed and counts."""
T = TypeVar("T")


@dataclass(frozen=True)
class SubsetSummary:
    """What :func:`subset_data` wrote."""

    out_dir: Path
    train: int
    test: int
    train_of: int
    test_of: int

    def line(self) -> str:
        return (f"wrote {self.train} of {self.train_of} train and {self.test} of {self.test_of} test images "
                f"(copies, Kaggle layout) to {self.out_dir}")


def subset_data(data_dir: Path, out_dir: Path, *, train: int, test: int, seed: int = 0,
                overwrite: bool = False) -> SubsetSummary:
    """Write a data folder holding copies of ``train`` (>= 2) random training images and
    ``test`` (>= 1) random test images of ``data_dir`` (chosen by ``seed``), with their rows of
    its CSVs (``test_truth.csv`` too when present).

    Raises:
        CloudpipeError: a bad source (naming file and line), counts out of range, an ``out_dir``
            that may not be replaced, lies in the source or holds it; nothing is written then.
    """
    truth = Path(data_dir) / TEST_TRUTH_CSV
    return build_data_folder(data_dir, out_dir, "subset", f"is pseudo-labelled ({PSEUDO_CSV}); take a subset of its source "
                             "folder", Inputs.of(truth if truth.exists() else None), overwrite,
                             lambda source, run: _subset(source, Path(out_dir), train, test, seed, run))


def build_data_folder(data_dir: Path, out_dir: Path, command: str, pseudo_refusal: str, reads: Inputs, overwrite: bool,
                      work: Callable[[Path, Runner], T]) -> T:
    """``work(data_dir resolved, runner)`` once ``out_dir``, a data folder ``command`` builds from
    ``data_dir`` (reading ``reads`` too), is claimed: never a folder that holds one of its
    inputs, or one it did not make. A pseudo-labelled ``data_dir`` is refused
    (``pseudo_refusal``), and so is an ``out_dir`` inside it or holding it."""
    data_dir, out_dir = require_dir(data_dir).resolve(), Path(out_dir)
    if (data_dir / PSEUDO_CSV).exists():
        raise CloudpipeError(pseudo_refusal, path=data_dir)
    if out_dir.resolve().is_relative_to(data_dir) or data_dir.is_relative_to(out_dir.resolve()):
        raise CloudpipeError(f"must lie outside the data folder {data_dir}", path=out_dir)
    with Runner.start() as run:
        run.claim(lambda: (Plan(data_inputs(data_dir) | reads, builds={out_dir: command}, overwrite=overwrite), None))
        return work(data_dir, run)


def _choose(images: list[str], count: int, least: int, rng: np.random.Generator, path: Path, option: str) -> set[str]:
    """``count`` of ``images`` chosen at random."""
    if not least <= count <= len(images):
        raise CloudpipeError(f"{option} {count}: choose between {least} and the {len(images)} images it lists", path=path)
    return set(rng.choice(images, size=count, replace=False))


def _rows_of(text: pd.DataFrame, images: pd.Series, chosen: set[str]) -> pd.DataFrame:
    """The rows of a CSV's ``text`` (``images``: the image of each row) that are of ``chosen`` images."""
    return text[images.isin(chosen).to_numpy()]


def _subset(data_dir: Path, out_dir: Path, train: int, test: int, seed: int, run: Runner) -> SubsetSummary:
    """The work of :func:`subset_data` once ``out_dir`` is claimed."""
    rng = np.random.default_rng(seed)
    train_images = pd.unique(read_train(data_dir)["image"]).tolist()  # a present-only train.csv's: the folder's
    sample = mask_rows(data_dir / SAMPLE_SUBMISSION_CSV, classes=False)
    test_images = pd.unique(sample[1]).tolist()
    chosen_train = _choose(train_images, train, 2, rng, data_dir / TRAIN_CSV, "--train")
    chosen_test = _choose(test_images, test, 1, rng, data_dir / SAMPLE_SUBMISSION_CSV, "--test")
    csvs = {TRAIN_CSV: _rows_of(*mask_rows(data_dir / TRAIN_CSV), chosen_train),
            SAMPLE_SUBMISSION_CSV: _rows_of(*sample, chosen_test)}
    if (data_dir / TEST_TRUTH_CSV).exists():
        csvs[TEST_TRUTH_CSV] = _rows_of(*mask_rows(data_dir / TEST_TRUTH_CSV), chosen_test)
    images = {TRAIN_IMAGES: [i for i in train_images if i in chosen_train],
              TEST_IMAGES: [i for i in test_images if i in chosen_test]}
    for folder, names in images.items():
        missing = [n for n in names if not (data_dir / folder / n).is_file()]
        if missing:
            raise CloudpipeError(f"{missing[0]} is listed but not there ({len(missing)} missing)", path=data_dir / folder)
    record = {"source": str(data_dir), "seed": seed, "train_images": train, "test_images": test}

    def fill(staging: Path) -> None:
        for folder, names in images.items():
            (staging / folder).mkdir()
            for name in names:
                shutil.copyfile(data_dir / folder / name, staging / folder / name)
        for name, rows in csvs.items():
            rows.to_csv(staging / name, index=False)
        (staging / SUBSET_YAML).write_text(yaml.safe_dump(record, sort_keys=False))
        write_folder_profile(staging, active())

    run.write_folder(out_dir, fill)
    return SubsetSummary(out_dir, train, test, len(train_images), len(test_images))

