"""Masks from stored probabilities: post-processing tuned on validation stores (``tune-seg``,
and the last step of ``predict-seg --split val``), applied to test stores (``apply-seg``, and
``predict-seg --split test``), and the masks written as Kaggle CSVs. No model runs here and
torch is not imported, so these commands start in a fraction of a second; the images are
spread over the cores (:mod:`cloudpipe.pipeline.parallel`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cloudpipe.algorithms.ensemble import mean_stores, normalise_weights
from cloudpipe.algorithms.postprocess import PostProcess, Step, choose_explained_steps, chosen_dice, default_index, grid_stats, make_steps
from cloudpipe.algorithms.robust import DefaultKept, check_rule
from cloudpipe.core.choices import DEFAULT_RULE, Rule
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.masks import resize_nearest
from cloudpipe.core.profile import active, join_label
from cloudpipe.core.rle import mask2rle, rle2mask
from cloudpipe.data.beside import info_path, postprocess_path_for
from cloudpipe.data.kaggle import (
    LABEL_COLUMNS,
    TRAIN_CSV,
    TrainData,
    data_inputs,
    list_test_images,
    load_train_data,
    require_dir,
    require_images,
    require_same_images,
    to_layout,
)
from cloudpipe.data.outputs import Inputs, csv_writer
from cloudpipe.data.probstore import StoreInfo, probability_store, read_store
from cloudpipe.data.runfolder import POSTPROCESS_JSON, read_json
from cloudpipe.pipeline.ensemble import Ensemble, require_same_validation
from cloudpipe.pipeline.parallel import over_rows, release_rows
from cloudpipe.pipeline.sources import PREDICT_SEG, Predicted, SourceInput, Writer, produced_by


def load_postprocess(path: Path) -> PostProcess:
    """Read a ``seg_postprocess.json``; errors name the file."""
    try:
        return PostProcess.from_dict(read_json(path, "post-processing"))
    except CloudpipeError as err:
        raise CloudpipeError(str(err).removeprefix(f"{path}: "), path=path) from None


def tune_postprocess(store: np.ndarray, names: list[str], rles: pd.DataFrame, mask_shape: tuple[int, int],
                     steps: tuple[Step, ...] = PostProcess().steps, rule: Rule = DEFAULT_RULE,
                     processes: int | None = None) -> tuple[PostProcess, np.ndarray, dict[str, DefaultKept]]:
    """Search every combination of the steps' grids per class on the Dice of the stored
    probabilities against the truth masks (:func:`postprocess_stats`), chosen by ``rule``.

    Returns:
        The choice, the mean Dice of every combination, (4, *grid), and per class where
        ``robust`` kept the defaults over a better combination, why.
    """
    return choose_explained_steps(steps, *postprocess_stats(store, names, rles, mask_shape, steps, processes), rule)


def postprocess_stats(store: np.ndarray, names: list[str], rles: pd.DataFrame, mask_shape: tuple[int, int],
                      steps: tuple[Step, ...] = PostProcess().steps,
                      processes: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every image's and class's :func:`~cloudpipe.algorithms.postprocess.grid_stats` against
    the truth (RLE at ``mask_shape``), the images spread over ``processes`` (None: one per core).

    Returns:
        ``inter`` and ``area`` (n, 4, *grid) and the truth areas (n, 4), int64: nothing else
        held grows with the number of images.
    """
    grid = tuple(len(s.grid) for s in steps)
    inter = np.zeros((len(names), len(active().classes), *grid), np.int64)
    area = np.zeros_like(inter)
    truth_area = np.zeros((len(names), len(active().classes)), np.int64)
    truth_rles = rles.loc[names, list(active().classes)].to_numpy()

    def rows(start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        part = [np.zeros((stop - start, *a.shape[1:]), np.int64) for a in (inter, area, truth_area)]
        for i in range(start, stop):
            for k in range(len(active().classes)):
                truth = resize_nearest(rle2mask(truth_rles[i, k], mask_shape), active().submission_size)
                part[2][i - start, k] = np.count_nonzero(truth)
                part[0][i - start, k], part[1][i - start, k] = grid_stats(steps, store[i, k], truth)
        release_rows(store, start, stop)
        return part[0], part[1], part[2]

    for start, (i, a, t) in over_rows(rows, len(names), processes):
        inter[start:start + len(i)], area[start:start + len(i)], truth_area[start:start + len(i)] = i, a, t
    return inter, area, truth_area


@dataclass
class SegPrediction:
    """What :func:`predict_segmentation` or :func:`retune_segmentation` wrote."""

    out: Path
    images: int
    postprocess: PostProcess
    images_per_second: float
    tuned_dice: float | None = None
    default_dice: float | None = None
    rule: Rule | None = None
    """The rule the post-processing was chosen by (validation splits)."""
    written: list[Path] = field(default_factory=list)
    kept: dict[str, DefaultKept] = field(default_factory=dict)
    """Per class, why the ``robust`` choice kept the steps' defaults over a better combination."""

    def line(self) -> str:
        text = f"{self.images} images at {self.images_per_second:.1f} img/s -> {self.out}"
        if self.tuned_dice is not None:
            before = f"{self.default_dice:.4f} with the steps' defaults -> " if self.default_dice is not None else ""
            text += f"; validation Dice {before}{self.tuned_dice:.4f} tuned ({self.rule} choice)"
        return text


def steps_of(names: Sequence[str] | None) -> tuple[Step, ...]:
    """The steps to tune: those named, else the default list."""
    return PostProcess().steps if names is None else make_steps(names)


def test_postprocess(ensemble: Ensemble, postprocess: Path | None) -> PostProcess:
    """The post-processing the test masks use, checked to be tuned for ``ensemble``."""
    if postprocess is None:
        postprocess = ensemble.own_file(POSTPROCESS_JSON, "an ensemble's test masks need --postprocess FILE: the "
                                        "<stem>_postprocess.json that predict-seg --split val (or tune-seg) wrote for "
                                        "these runs and weights")
        if not postprocess.exists():
            raise CloudpipeError(f"no {POSTPROCESS_JSON}: the run's post-processing is not tuned; run predict-seg "
                                 "--split val first (it tunes and writes it), or pass --postprocess FILE",
                                 path=ensemble.runs[0])
    ensemble.check_tuned_for(read_json(postprocess, "post-processing"), postprocess, "post-processing settings")
    return load_postprocess(postprocess)


@dataclass(frozen=True)
class MaskOutputs:
    """Where a command's masks go: the CSV, the post-processing file (None for test masks),
    the runner's ``write``, and how many processes encode the masks."""

    out: Path
    post_out: Path | None
    write: Callable[[Mapping[Path, Callable[[Path], object]]], None]
    processes: int | None = None
    keep_store: bool = True
    """Write the probability store beside the CSV (False: the masks alone; an earlier store
    beside them, which would no longer match, is removed)."""


@dataclass(frozen=True)
class Tuning:
    """How post-processing is tuned on validation images: the names of the steps tuned, in
    order (None: the default list), and the rule that picks among their combinations."""

    steps: Sequence[str] | None = None
    choice: Rule = DEFAULT_RULE


def tune_and_write(store: np.ndarray, names: list[str], data: TrainData, ensemble: Ensemble, outputs: MaskOutputs,
                   steps: tuple[Step, ...], choice: Rule, made: Predicted | None = None) -> SegPrediction:
    """Tune ``steps`` on a validation store and write the masks, the choice and the gate
    inputs made of ``made`` (:func:`write_outputs`)."""
    post, dice, kept = tune_postprocess(store, names, data.rles, data.image_shape, steps, choice, outputs.processes)
    result = SegPrediction(outputs.out, len(names), post, 0.0, rule=choice, kept=kept)
    at_default = default_index(post.steps)
    if at_default is not None:
        result.default_dice = float(dice[(slice(None), *at_default)].mean())
    result.tuned_dice = float(chosen_dice(post, dice).mean())
    return write_outputs(result, store, names, ensemble, outputs, made)


def write_outputs(result: SegPrediction, store: np.ndarray, names: list[str], ensemble: Ensemble, outputs: MaskOutputs,
                  made: Predicted | None = None) -> SegPrediction:
    """Write the CSV with, as one group (a failure leaves every old file or none), the gate
    inputs made of ``made`` (:func:`input_writers`) and the choice (when ``outputs.post_out``)."""
    writers = {result.out: masks_writer(names, store, result.postprocess, outputs.processes)}
    if made is not None:
        writers |= input_writers(result.out, made, outputs.keep_store)
    if outputs.post_out is not None:
        text = json.dumps({**result.postprocess.to_dict(), "choice": result.rule, **ensemble.record()}, indent=2) + "\n"
        writers[outputs.post_out] = lambda tmp: tmp.write_text(text)
    outputs.write(writers)
    result.written = [path for path, write in writers.items() if write is not None]
    return result


def _kept(made: SourceInput, keep_store: bool) -> bool:
    """Whether predict-seg writes the input ``made`` (``keep_store=False`` drops those written with the store)."""
    return keep_store or not made.producer.with_store


def input_files(out: Path, keep_store: bool = True) -> tuple[list[Path], list[Path]]:
    """The files of the gate inputs predict-seg writes beside ``out``
    (:func:`~cloudpipe.pipeline.sources.produced_by`): those it writes, and the existing ones
    it removes (an input that ``keep_store=False`` drops would no longer match the masks)."""
    made = produced_by(PREDICT_SEG)
    return ([p for i in made if _kept(i, keep_store) for p in i.files_beside(out)],
            [p for i in made if not _kept(i, keep_store) for p in i.files_beside(out) if p.exists()])


def input_writers(out: Path, made: Predicted, keep_store: bool = True) -> dict[Path, Writer | None]:
    """The writers of :func:`input_files` (None: removed) from what predict-seg computed."""
    writers: dict[Path, Writer | None] = {}
    for i in produced_by(PREDICT_SEG):
        files = i.files_beside(out)
        if not _kept(i, keep_store):
            writers |= {p: None for p in files if p.exists()}
        elif (write := i.producer.write(made)) is not None:
            writers |= dict(zip(files, write, strict=True))
    return writers


def masks_writer(names: list[str], store: np.ndarray, post: PostProcess, processes: int | None = None):
    """A writer of the CSV (image-major, class order, in the profile's submission layout): every
    mask post-processed and encoded, the images spread over the cores."""

    def rows(start: int, stop: int) -> list[str]:
        rles = [mask2rle(post.apply(store[i, k], k)) for i in range(start, stop) for k in range(len(active().classes))]
        release_rows(store, start, stop)
        return rles

    rles = [r for _, part in over_rows(rows, len(names), processes) for r in part]
    classes = active().classes
    frame = pd.DataFrame({LABEL_COLUMNS[0]: [join_label(name, c) for name in names for c in classes],
                          LABEL_COLUMNS[1]: rles, "image": np.repeat(names, len(classes)),
                          "class_name": np.tile(classes, len(names))})
    return csv_writer(to_layout(frame, active().submission_csv))


def retune_segmentation(stores: Sequence[Path], data_dir: Path, out: Path, *, weights: Sequence[float] | None = None,
                        tuning: Tuning = Tuning(), overwrite: bool = False,
                        processes: int | None = None) -> SegPrediction:
    """Tune post-processing again on the weighted mean of validation stores (images matched by
    name) as ``predict-seg --split val`` does, without running a model; writes the masks to
    ``out`` and the choice, recording every run in the stores, to ``<stem>_postprocess.json``.

    Raises:
        CloudpipeError: a bad, truncated or test store, stores of different images, images
            without truth, or an output that may not be written.
    """
    from cloudpipe.engine.runner import Plan, Runner

    def declare() -> tuple[Plan, tuple[Path, list[float], tuple[Step, ...], Rule, Path]]:
        data = require_dir(data_dir)
        share, reads = _stores_read(stores, weights, data)
        post_out = postprocess_path_for(out)
        return Plan(reads, [out, post_out], overwrite=overwrite), (data, share, steps_of(tuning.steps), check_rule(tuning.choice), post_out)

    with Runner.start() as run:
        data_dir, share, tuned_steps, choice, post_out = run.claim(declare)
        started = time.perf_counter()
        read = read_stores(stores, "val")
        require_same_validation([Path(s) for s in stores], [info.images for _, info in read])
        names = read[0][1].images
        ensemble = Ensemble.merged([(info, w) for (_, info), w in zip(read, share)])
        store = _mean_of(read, share, names, Path(out).parent)
        data = load_train_data(data_dir)
        require_images(names, data.rles.index, TRAIN_CSV, "the store", path=stores[0])
        speed = len(names) / max(time.perf_counter() - started, 1e-9)
        result = tune_and_write(store, names, data, ensemble, MaskOutputs(Path(out), post_out, run.write, processes),
                                tuned_steps, choice)
        result.images_per_second = speed
        return result


def _stores_read(stores: Sequence[Path], weights: Sequence[float] | None, data: Path) -> tuple[list[float], Inputs]:
    """The stores' weights (equal when None), checked, and the files read: ``data``'s, the stores'."""
    if not stores:
        raise CloudpipeError("give at least one --store")
    reads = data_inputs(data) | Inputs.of(*(p for s in stores for p in (Path(s), info_path(s))))
    return normalise_weights(weights, len(stores), per="--store"), reads


def _mean_of(read: list[tuple[np.memmap, StoreInfo]], share: list[float], names: list[str], folder: Path) -> np.ndarray:
    """The stores' weighted mean, rows in ``names`` order (one store in that order: itself)."""
    if len(read) == 1 and read[0][1].images == names:
        return read[0][0]
    return mean_stores([a for a, _ in read], share, probability_store(folder, (len(names), *read[0][0].shape[1:])),
                       rows=[rows_of(names, info.images) for _, info in read])


def apply_segmentation(stores: Sequence[Path], data_dir: Path, out: Path, postprocess: Path, *,
                       weights: Sequence[float] | None = None, overwrite: bool = False,
                       processes: int | None = None) -> SegPrediction:
    """The test masks of the weighted mean of test stores, post-processed by ``postprocess``,
    without running a model: the same bytes as ``predict-seg --split test`` of their runs.

    Raises:
        CloudpipeError: a bad, truncated or validation store, a store whose images are not
            the test images of ``data_dir``, post-processing tuned for other runs or weights
            than those averaged into the stores, or an output that may not be written.
    """
    from cloudpipe.engine.runner import Plan, Runner

    def declare() -> tuple[Plan, tuple[Path, list[float]]]:
        data = require_dir(data_dir)
        share, reads = _stores_read(stores, weights, data)
        return Plan(reads | Inputs.of(postprocess), [out], overwrite=overwrite), (data, share)

    with Runner.start() as run:
        data_dir, share = run.claim(declare)
        started = time.perf_counter()
        read = read_stores(stores, "test")
        ensemble = Ensemble.merged([(info, w) for (_, info), w in zip(read, share)])
        post = test_postprocess(ensemble, Path(postprocess))
        names = list_test_images(data_dir)
        for path, (_, info) in zip(stores, read):
            require_same_images(names, info.images, f"{path}: compared with the test images of {data_dir}, it",
                                "; pass the store predict-seg --split test wrote with this --data")
        store = _mean_of(read, share, names, Path(out).parent)
        result = SegPrediction(Path(out), len(names), post, 0.0)
        result = write_outputs(result, store, names, ensemble, MaskOutputs(Path(out), None, run.write, processes))
        result.images_per_second = len(names) / max(time.perf_counter() - started, 1e-9)
        return result


def read_stores(stores: Sequence[Path], split: str) -> list[tuple[np.memmap, StoreInfo]]:
    """Every store, mapped and checked to hold ``split`` probabilities."""
    read = [read_store(s) for s in stores]
    for path, (_, info) in zip(stores, read):
        if info.split != split:
            need = "tuning needs a validation store" if split == "val" else "applying needs a test store"
            raise CloudpipeError(f"holds {info.split} probabilities; {need}", path=path)
    return read


def rows_of(names: list[str], images: list[str]) -> np.ndarray:
    """The row of each of ``names`` in ``images`` (e.g. a store's rows)."""
    row = {name: i for i, name in enumerate(images)}
    return np.array([row[name] for name in names], dtype=np.int64)
