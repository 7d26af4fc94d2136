"""``predict-seg`` and ``tune-seg``: segmentation masks as a Kaggle CSV, with tuned
post-processing, from one run or the weighted mean of several.

Probabilities are streamed from each model, resized to the submission size (350 x 525) on the
device and kept as uint8 per pixel in a memory map, so memory stays flat; several runs are
averaged run by run (:mod:`cloudpipe.algorithms.ensemble`). The probabilities are kept beside
the CSV (:mod:`cloudpipe.data.probstore`) for later ensembles and re-tuning. Post-processing is
the ordered list of steps of :mod:`cloudpipe.algorithms.postprocess`: on the validation split
it is tuned on Kaggle Dice and saved (``RUN/seg_postprocess.json`` for one run,
``<stem>_postprocess.json`` beside the CSV for an ensemble, with the runs and weights it was
tuned for); the test split then uses it.

Tuning and applying post-processing to a store need no model (``tune-seg``, ``apply-seg``):
they spread the store's images over the cores in forked processes, which read the store's
memory map where the parent left it, and torch is imported only by the functions that run a
model, so those commands start in a fraction of a second.
"""

from __future__ import annotations

import json
import math
import mmap
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import cv2
import numpy as np
import pandas as pd

from cloudpipe.algorithms.ensemble import RunningMean, mean_stores, normalise_weights
from cloudpipe.algorithms.postprocess import (
    PostProcess,
    Step,
    choose,
    chosen_dice,
    default_index,
    grid_stats,
    make_steps,
)
from cloudpipe.algorithms.robust import check_rule
from cloudpipe.core.choices import DEFAULT_RULE, Rule
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
    TEST_IMAGES,
    TRAIN_IMAGES,
    TrainData,
    data_inputs,
    list_test_images,
    load_train_data,
    require_dir,
)
from cloudpipe.data.outputs import Inputs, claim_outputs, csv_writer, output_lock, write_files
from cloudpipe.data.probstore import StoreInfo, array_writer, info_path, info_writer, presence_path, read_store, store_paths
from cloudpipe.data.runfolder import POSTPROCESS_JSON, read_json, run_inputs
from cloudpipe.engine.config import load_run_config
from cloudpipe.engine.settings import InferenceSettings
from cloudpipe.pipeline.ensemble import Ensemble, require_same_validation
from cloudpipe.pipeline.validation import validation_sets

if TYPE_CHECKING:  # torch is imported where a model runs: tune-seg and apply-seg start without it
    import torch

    from cloudpipe.engine.devices import Dist

T = TypeVar("T")
ROWS_PER_TASK = 8  # images per task of the process pool: ~5.9 MB of the store


def load_postprocess(path: Path) -> PostProcess:
    """Read a ``seg_postprocess.json``; errors name the file."""
    try:
        return PostProcess.from_dict(read_json(path, "post-processing"))
    except CloudpipeError as err:
        raise CloudpipeError(str(err).removeprefix(f"{path}: "), path=path) from None


def tune_postprocess(store: np.ndarray, names: list[str], rles: pd.DataFrame, mask_shape: tuple[int, int],
                     steps: tuple[Step, ...] = PostProcess().steps, rule: Rule = DEFAULT_RULE,
                     processes: int | None = None) -> tuple[PostProcess, np.ndarray]:
    """Search every combination of the steps' grids per class on the Dice of the stored
    probabilities against the truth masks (RLE at ``mask_shape``, resized to the submission
    size), and choose by ``rule`` (:mod:`cloudpipe.algorithms.robust`); the statistics are
    :func:`postprocess_stats`'.

    Returns:
        The choice and the mean Dice of every combination, (4, *grid).
    """
    return choose(steps, *postprocess_stats(store, names, rles, mask_shape, steps, processes), rule)


def postprocess_stats(store: np.ndarray, names: list[str], rles: pd.DataFrame, mask_shape: tuple[int, int],
                      steps: tuple[Step, ...] = PostProcess().steps,
                      processes: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every image's and class's :func:`~cloudpipe.algorithms.postprocess.grid_stats`, the
    images spread over ``processes`` forked processes (None: one per core).

    Returns:
        ``inter`` and ``area`` (n, 4, *grid) and the truth areas (n, 4), int64: all that
        :func:`~cloudpipe.algorithms.postprocess.choose` needs. Memory holds these and the
        store's pages the processes read; nothing else grows with the number of images.
    """
    grid = tuple(len(s.grid) for s in steps)
    inter = np.zeros((len(names), len(CLASSES), *grid), np.int64)
    area = np.zeros_like(inter)
    truth_area = np.zeros((len(names), len(CLASSES)), np.int64)
    truth_rles = rles.loc[names, list(CLASSES)].to_numpy()

    def rows(start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        part = [np.zeros((stop - start, *a.shape[1:]), np.int64) for a in (inter, area, truth_area)]
        for i in range(start, stop):
            for k in range(len(CLASSES)):
                truth = resize_nearest(rle2mask(truth_rles[i, k], mask_shape), SUBMISSION_SHAPE)
                part[2][i - start, k] = np.count_nonzero(truth)
                part[0][i - start, k], part[1][i - start, k] = grid_stats(steps, store[i, k], truth)
        release_rows(store, start, stop)
        return part[0], part[1], part[2]

    for start, (i, a, t) in zip(range(0, len(names), ROWS_PER_TASK), over_rows(rows, len(names), processes)):
        inter[start:start + len(i)], area[start:start + len(i)], truth_area[start:start + len(i)] = i, a, t
    return inter, area, truth_area


def release_rows(store: np.ndarray, start: int, stop: int) -> None:
    """Hand rows ``start..stop`` of a memory-mapped store back (``MADV_DONTNEED``): the pages
    leave this process's memory and stay in the page cache, so a process reading a store of
    any size in turn holds a task's rows at a time. A shared map (``read_store``'s, or a
    temporary store) loses nothing; anything else is left alone."""
    buffer = getattr(store, "base", None)
    if not isinstance(store, np.memmap) or not isinstance(buffer, mmap.mmap) or stop <= start:
        return
    row = store[0].nbytes
    first = store.offset % mmap.ALLOCATIONGRANULARITY + start * row  # np.memmap maps from an aligned offset
    begin = first - first % mmap.PAGESIZE
    buffer.madvise(mmap.MADV_DONTNEED, begin, first - begin + (stop - start) * row)


_TASK: list[Callable] = []
"""The job of the forked processes of :func:`over_rows` (inherited, never pickled)."""


def _run_task(rows: tuple[int, int]):
    return _TASK[0](*rows)


def over_rows(job: Callable[[int, int], T], n: int, processes: int | None = None) -> Iterator[T]:
    """``job(start, stop)`` for rows ``0..n`` in tasks of :data:`ROWS_PER_TASK`, results in
    order, on ``processes`` forked processes (None: one per core; one process, or a single
    task, runs inline). The processes inherit ``job`` and whatever it reads (a store's memory
    map) at the fork, so nothing of the store is copied or pickled; each runs OpenCV on one
    thread (set before the fork, restored after)."""
    tasks = [(start, min(start + ROWS_PER_TASK, n)) for start in range(0, n, ROWS_PER_TASK)]
    processes = min(len(os.sched_getaffinity(0)) if processes is None else processes, len(tasks))
    if processes <= 1:
        yield from (job(*rows) for rows in tasks)
        return
    _TASK[:] = [job]
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # before the fork: a child inheriting OpenCV's thread pool would wait on its threads for ever
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            yield from pool.imap(_run_task, tasks)
    finally:
        _TASK.clear()
        cv2.setNumThreads(threads)


@dataclass
class SegPrediction:
    """What :func:`predict_segmentation` or :func:`retune_segmentation` wrote."""

    out: Path
    images: int
    postprocess: PostProcess
    images_per_second: float
    tuned_dice: float | None = None
    default_dice: float | None = None
    choice: Rule | None = None
    """The rule the post-processing was chosen by (validation splits)."""
    written: list[Path] = field(default_factory=list)
    presence: pd.DataFrame | None = None
    """The segmentation head's presence per image (written as ``<stem>_presence.csv``), when
    every run's model has a head."""

    def line(self) -> str:
        text = f"{self.images} images at {self.images_per_second:.1f} img/s -> {self.out}"
        if self.tuned_dice is not None:
            before = f"{self.default_dice:.4f} with the steps' defaults -> " if self.default_dice is not None else ""
            text += f"; validation Dice {before}{self.tuned_dice:.4f} tuned ({self.choice} choice)"
        return text


def postprocess_path_for(out: Path) -> Path:
    """Where an ensemble's post-processing goes beside its CSV: ``<stem>_postprocess.json``."""
    return out.with_name(f"{out.stem}_postprocess.json")


def predict_segmentation(
    run_dirs: Path | Sequence[Path],
    data_dir: Path,
    split: Literal["val", "test"],
    out: Path,
    *,
    weights: Sequence[float] | None = None,
    postprocess: Path | None = None,
    steps: Sequence[str] | None = None,
    choice: Rule = DEFAULT_RULE,
    settings: InferenceSettings = InferenceSettings(batch_size=8),
    overwrite: bool = False,
) -> SegPrediction:
    """Write the masks of one segmentation run, or of the weighted mean of several, for the
    validation or test images as a Kaggle CSV, with the probabilities beside it
    (:func:`~cloudpipe.data.probstore.store_paths`; the three files are replaced together).

    ``val``: the runs' validation images (out-of-fold with folds; every run must validate on
    the same images), post-processing tuned on their Dice and saved to
    ``RUN/seg_postprocess.json`` for one run, to ``<stem>_postprocess.json`` beside ``out`` for
    an ensemble. ``test``: the test images in ``sample_submission.csv`` order, every model of
    every run averaged, post-processed by ``postprocess`` (default: the run's own file, else
    none is refused; an ensemble must name its file; the file must be tuned for these runs
    and weights, when it records any). ``steps``: the names of the steps ``val`` tunes, in order (default
    ``threshold, min_size, shape``; see :data:`~cloudpipe.algorithms.postprocess.STEPS`), and
    ``choice`` the rule that picks among their combinations (:mod:`cloudpipe.algorithms.robust`).

    Runs may differ in architecture, encoder and image size: each one's probabilities are
    resized to 350 x 525 before averaging. N runs cost N inference passes and the memory of one.

    Raises:
        CloudpipeError: a bad run, data folder, post-processing file or output path, or runs
            whose validation images differ.
    """
    from cloudpipe.engine.devices import Dist

    dist = Dist.from_env()
    try:
        with ExitStack() as claims:
            with dist.together():  # every rank checks (rank 0 reports); rank 0, the one that writes, locks
                ensemble = Ensemble.of(run_dirs, weights)
                data_dir = require_dir(data_dir)
                if split == "val" and postprocess is not None:
                    raise CloudpipeError("--postprocess is read by --split test; --split val tunes and writes it")
                if split == "test" and steps is not None:
                    raise CloudpipeError("--steps is tuned by --split val; --split test applies the tuned file's steps")
                tuned_steps, choice = _steps(steps), check_rule(choice)
                post_out = None if split == "test" else (
                    ensemble.runs[0] / POSTPROCESS_JSON if ensemble.single else postprocess_path_for(out))
                outputs = [out, *store_paths(out), presence_path(out)] + (
                    [post_out] if post_out is not None and not ensemble.single else [])
                # never replaced, even with --overwrite; the run's own seg_postprocess.json is re-tuned by --split val
                inputs = data_inputs(data_dir) | run_inputs(ensemble.runs, writes=[post_out] if post_out else []) | \
                    Inputs.of(postprocess)
                claims.enter_context(claim_outputs(outputs, inputs, overwrite=overwrite, lock=dist.is_main))
                if post_out is not None and ensemble.single and dist.is_main:
                    claims.enter_context(output_lock(post_out))  # the run's own file: re-tuned, never refused, but locked
            return _predict_and_write(ensemble, data_dir, split, out, postprocess, post_out, tuned_steps, choice,
                                      settings, dist)
    finally:
        dist.close()


def _steps(names: Sequence[str] | None) -> tuple[Step, ...]:
    """The steps to tune: those named, else the default list."""
    return PostProcess().steps if names is None else make_steps(names)


def _test_postprocess(ensemble: Ensemble, postprocess: Path | None) -> PostProcess:
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


def _predict_and_write(ensemble: Ensemble, data_dir: Path, split: Literal["val", "test"], out: Path,
                       postprocess: Path | None, post_out: Path | None, steps: tuple[Step, ...], choice: Rule,
                       settings: InferenceSettings, dist: Dist) -> SegPrediction:
    """The work of :func:`predict_segmentation` once its outputs are checked and locked. Under
    ``torchrun`` each rank predicts its :meth:`~Dist.shard` of the images; rank 0 joins the
    shares, tunes and writes, and the other ranks return what they predicted, writing nothing."""
    from cloudpipe.engine.devices import resolve_device

    with dist.together():  # a bad file or image on one rank stops every rank with its error
        device = resolve_device(settings.device, dist)
        started = time.perf_counter()
        if split == "test":
            for run in ensemble.runs:
                load_run_config(run, "segmentation")
            post = _test_postprocess(ensemble, postprocess)  # read before inference: a bad file fails fast
            names = list_test_images(data_dir)
            runs = [[(run, names, data_dir / TEST_IMAGES)] for run in ensemble.runs]
        else:
            sets = [validation_sets(run, data_dir, "segmentation") for run in ensemble.runs]
            require_same_validation(ensemble.runs, [[i for s in splits for i in s.val] for _, splits in sets])
            data = sets[0][0]
            names = [i for s in sets[0][1] for i in s.val]
            runs = [[(s.folder, s.val, data_dir / TRAIN_IMAGES) for s in splits] for _, splits in sets]
        mine = dist.shard(names)
        if dist.world > 1:
            share = set(mine)
            runs = [[(folder, [i for i in images if i in share], image_dir) for folder, images, image_dir in parts]
                    for parts in runs]
        store, presence = _predict_to_store(ensemble, runs, mine, out.parent, device, settings)
    if dist.world > 1:
        store, presence = _join_shares(dist, store, presence, names, out)
        if not dist.is_main:
            return SegPrediction(out, len(mine), PostProcess(), len(mine) / (time.perf_counter() - started))
    speed = len(names) / (time.perf_counter() - started)
    info = StoreInfo(split, names, **ensemble.record())
    if split == "test":
        return _write_outputs(SegPrediction(out, len(names), post, speed, presence=presence), store, names, info, None,
                              ensemble)
    return _tune_and_write(store, names, info, data, ensemble, out, post_out, speed, steps, choice, presence)


def _tune_and_write(store: np.ndarray, names: list[str], info: StoreInfo | None, data: TrainData, ensemble: Ensemble,
                    out: Path, post_out: Path, speed: float, steps: tuple[Step, ...], choice: Rule,
                    presence: pd.DataFrame | None = None, processes: int | None = None) -> SegPrediction:
    """Tune ``steps`` on a validation store (chosen by ``choice``) and write the masks, the
    store (when ``info``), the head's presence (when given) and the choice."""
    post, dice = tune_postprocess(store, names, data.rles, data.image_shape, steps, choice, processes)
    result = SegPrediction(out, len(names), post, speed, presence=presence, choice=choice)
    at_default = default_index(post.steps)
    if at_default is not None:
        result.default_dice = float(dice[(slice(None), *at_default)].mean())
    result.tuned_dice = float(chosen_dice(post, dice).mean())
    return _write_outputs(result, store, names, info, post_out, ensemble, processes)


def _write_outputs(result: SegPrediction, store: np.ndarray, names: list[str], info: StoreInfo | None,
                   post_out: Path | None, ensemble: Ensemble, processes: int | None = None) -> SegPrediction:
    """Write the CSV with, as one group, the store (when ``info``) and the post-processing
    choice (when ``post_out``): a failure leaves every old file or none."""
    writers = {result.out: _masks_writer(names, store, result.postprocess, processes)}
    if info is not None:
        npy, meta = store_paths(result.out)
        writers |= {npy: array_writer(store), meta: info_writer(info)}
    if result.presence is not None:
        writers[presence_path(result.out)] = csv_writer(result.presence.reset_index(), float_format="%.6f")
    if post_out is not None:
        text = json.dumps({**result.postprocess.to_dict(), "choice": result.choice, **ensemble.record()}, indent=2) + "\n"
        writers[post_out] = lambda tmp: tmp.write_text(text)
    write_files(writers)
    result.written = list(writers)
    return result


def probability_store(folder: Path, shape: tuple[int, ...], dtype: type = np.uint8) -> np.memmap:
    """A memory map of ``shape`` in a file of ``folder`` that has no name: the file is
    unlinked as soon as it is made (or never named, with ``O_TMPFILE``), so its space returns
    when the map is dropped or the process ends, even by ``kill -9``. Its space is allocated
    up front, so a full disk fails here rather than as a SIGBUS mid-run.

    Raises:
        CloudpipeError: the file cannot be made or sized (e.g. no space left on device).
    """
    try:
        with tempfile.TemporaryFile(dir=folder) as file:  # the map keeps its own handle
            os.posix_fallocate(file.fileno(), 0, math.prod(shape) * np.dtype(dtype).itemsize)
            return np.memmap(file, dtype=dtype, mode="w+", shape=shape)
    except OSError as err:
        raise CloudpipeError(f"cannot make the temporary probability store ({err.strerror or err})", path=folder) from None


Part = tuple[Path, list[str], Path]
"""A model folder (a run, or one fold of it), the images it predicts, and their folder."""


def _predict_to_store(ensemble: Ensemble, runs: list[list[Part]], names: list[str], folder: Path,
                      device: torch.device, settings: InferenceSettings) -> tuple[np.memmap, pd.DataFrame | None]:
    """Stream every run's parts through their models into a uint8 memory map (n, 4, 350, 525)
    in ``folder``, rows in ``names`` order; several runs are averaged with their weights via a
    float32 map of the same shape, run by run, so memory stays flat however many images or runs.
    Also returns the weighted mean of the classification heads' presence (indexed by image)
    when every model has a head, else None."""
    import torch

    from cloudpipe.engine.infer import load_run, stream_probs

    shape = (len(names), len(CLASSES), *SUBMISSION_SHAPE)
    store = probability_store(folder, shape)
    mean = None if ensemble.single else RunningMean(probability_store(folder, shape, np.float32))
    presence, every_head = np.zeros((len(names), len(CLASSES))), True
    for r, (run, parts, weight) in enumerate(zip(ensemble.runs, runs, ensemble.weights)):
        desc = f"predict-seg {run.name}" + ("" if ensemble.single else f" ({r + 1}/{len(ensemble.runs)})")
        for model_dir, images, image_dir in parts:
            if not images:  # e.g. a fold none of whose images are this rank's
                continue
            model = load_run(model_dir, "segmentation", device)
            rows = _rows_of(images, names)
            for indices, probs, head in stream_probs(model, [image_dir / n for n in images], device, settings, desc=desc):
                every_head = every_head and head is not None
                if head is not None:
                    presence[rows[indices]] += weight * head.cpu().numpy()
                small = torch.nn.functional.interpolate(probs, size=SUBMISSION_SHAPE, mode="bilinear", align_corners=False)
                values = (small * 255).round().to(torch.uint8).cpu().numpy()
                if mean is None:
                    store[rows[indices]] = values
                else:
                    mean.add(rows[indices], values, weight)
    heads = pd.DataFrame(presence, index=pd.Index(names, name="image"), columns=list(CLASSES)) if every_head else None
    return (store if mean is None else mean.write(store)), heads


def _join_shares(dist: Dist, store: np.ndarray, presence: pd.DataFrame | None, names: list[str],
                 out: Path) -> tuple[np.ndarray | None, pd.DataFrame | None]:
    """Rank 0's store and presence of all ``names`` from every rank's share (rows
    ``rank, rank + world, ...``); (None, None) on the other ranks.

    The other ranks' uint8 shares pass through hidden files beside ``out``
    (``.<name>.rank<r>.<pid>.npy``, named by the writing process so that the next run of ``out``
    can remove the share of a rank killed with ``-9``), which rank 0 copies into its memory map a
    few rows at a time: memory stays flat, where gathering the arrays themselves would hold every
    rank's share in every rank's memory at once. Each rank removes its file when rank 0 is done,
    rank 0 removes them all in any case (a rank that fails stops the others: torchrun ends
    them); rank 0's own share never leaves its memory map, and the small presence frames are
    gathered directly.
    """
    mine = out.with_name(f".{out.name}.rank{dist.rank}.{os.getpid()}.npy")
    shares = [mine]
    try:
        with dist.together():
            if not dist.is_main:
                try:
                    np.save(mine, store)
                except OSError as err:
                    raise CloudpipeError(f"cannot write this rank's probabilities ({err.strerror or err})",
                                         path=mine) from None
        gathered = dist.gather((presence, mine))  # also: every share is written
        heads, shares = [h for h, _ in gathered], [path for _, path in gathered]
        full = None
        if dist.is_main:
            full = probability_store(out.parent, (len(names), *store.shape[1:]))
            for r, path in enumerate(shares):
                part = store if r == 0 else np.load(path, mmap_mode="r")
                rows = np.arange(r, len(names), dist.world)
                for start in range(0, len(rows), 16):
                    full[rows[start : start + 16]] = part[start : start + 16]
                del part
        dist.barrier()  # rank 0 has read every share
    finally:
        for path in shares if dist.is_main else [mine]:
            path.unlink(missing_ok=True)
    if not dist.is_main:
        return None, None
    joined = None if any(h is None for h in heads) else pd.concat(heads).reindex(pd.Index(names, name="image"))
    return full, joined


def _masks_writer(names: list[str], store: np.ndarray, post: PostProcess, processes: int | None = None):
    """Post-process and encode every mask, the images spread over the cores
    (:func:`over_rows`); a writer of the CSV (image-major, class order)."""

    def rows(start: int, stop: int) -> list[str]:
        rles = [mask2rle(post.apply(store[i, k], k)) for i in range(start, stop) for k in range(len(CLASSES))]
        release_rows(store, start, stop)
        return rles

    rles = [r for part in over_rows(rows, len(names), processes) for r in part]
    labels = [join_label(name, c) for name in names for c in CLASSES]
    return csv_writer(pd.DataFrame({CSV_COLUMNS[0]: labels, CSV_COLUMNS[1]: rles}))


def retune_segmentation(stores: Sequence[Path], data_dir: Path, out: Path, *, weights: Sequence[float] | None = None,
                        steps: Sequence[str] | None = None, choice: Rule = DEFAULT_RULE, overwrite: bool = False,
                        processes: int | None = None) -> SegPrediction:
    """Tune post-processing again from validation probability stores alone, without running a
    model: the stores' weighted mean (images matched by name) is tuned on Dice like
    ``predict-seg --split val``; writes the masks to ``out`` and the choice, recording every run
    averaged into the stores, to ``<stem>_postprocess.json`` (read by ``predict-seg --split
    test --postprocess``). ``steps`` and ``choice``: as for :func:`predict_segmentation`;
    ``processes``: how many share the images (None: one per core).

    Raises:
        CloudpipeError: a bad, truncated or test store, stores of different images, images
            without truth, or an output that may not be written.
    """
    data_dir = require_dir(data_dir)
    if not stores:
        raise CloudpipeError("give at least one --store")
    share = normalise_weights(weights, len(stores), per="--store")
    tuned_steps, choice = _steps(steps), check_rule(choice)
    post_out = postprocess_path_for(out)
    inputs = data_inputs(data_dir) | Inputs.of(*(p for s in stores for p in (Path(s), info_path(s))))
    with claim_outputs([out, post_out], inputs, overwrite=overwrite):
        started = time.perf_counter()
        read = _read_stores(stores, "val")
        require_same_validation([Path(s) for s in stores], [info.images for _, info in read])
        names = read[0][1].images
        ensemble = Ensemble.merged([(info, w) for (_, info), w in zip(read, share)])
        store = read[0][0] if len(read) == 1 else mean_stores(
            [a for a, _ in read], share, probability_store(out.parent, read[0][0].shape),
            rows=[_rows_of(names, info.images) for _, info in read])
        data = load_train_data(data_dir)
        missing = [i for i in names if i not in data.rles.index]
        if missing:
            raise CloudpipeError(f"{len(missing)} image(s) have no truth in train.csv (e.g. {', '.join(missing[:3])})",
                                 path=stores[0])
        speed = len(names) / max(time.perf_counter() - started, 1e-9)
        return _tune_and_write(store, names, None, data, ensemble, out, post_out, speed, tuned_steps, choice, processes=processes)


def apply_segmentation(stores: Sequence[Path], data_dir: Path, out: Path, postprocess: Path, *,
                       weights: Sequence[float] | None = None, overwrite: bool = False,
                       processes: int | None = None) -> SegPrediction:
    """The test masks from stored test probabilities, without running a model: the stores'
    weighted mean (images matched by name), post-processed by ``postprocess``, written to
    ``out`` with the same bytes as ``predict-seg --split test`` of the runs in the stores.

    Raises:
        CloudpipeError: a bad, truncated or validation store, a store whose images are not
            the test images of ``data_dir``, post-processing tuned for other runs or weights
            than those averaged into the stores, or an output that may not be written.
    """
    data_dir = require_dir(data_dir)
    if not stores:
        raise CloudpipeError("give at least one --store")
    share = normalise_weights(weights, len(stores), per="--store")
    inputs = data_inputs(data_dir) | Inputs.of(*(p for s in stores for p in (Path(s), info_path(s))), Path(postprocess))
    with claim_outputs([out], inputs, overwrite=overwrite):
        started = time.perf_counter()
        read = _read_stores(stores, "test")
        ensemble = Ensemble.merged([(info, w) for (_, info), w in zip(read, share)])
        post = _test_postprocess(ensemble, Path(postprocess))
        names = list_test_images(data_dir)
        for path, (_, info) in zip(stores, read):
            lacks, extra = sorted(set(names) - set(info.images)), sorted(set(info.images) - set(names))
            if lacks or extra:
                raise CloudpipeError(f"holds other images than the test images of {data_dir} ({len(lacks)} missing, "
                                     f"{len(extra)} extra, e.g. {', '.join((lacks or extra)[:3])})", path=path)
        if len(read) == 1 and read[0][1].images == names:
            store = read[0][0]
        else:
            store = mean_stores([a for a, _ in read], share, probability_store(Path(out).parent, (len(names), *read[0][0].shape[1:])),
                                rows=[_rows_of(names, info.images) for _, info in read])
        result = SegPrediction(Path(out), len(names), post, 0.0)
        result = _write_outputs(result, store, names, None, None, ensemble, processes)
        result.images_per_second = len(names) / max(time.perf_counter() - started, 1e-9)
        return result


def _read_stores(stores: Sequence[Path], split: str) -> list[tuple[np.memmap, StoreInfo]]:
    """Every store, mapped and checked (:func:`~cloudpipe.data.probstore.read_store`), each
    holding ``split`` probabilities."""
    read = [read_store(s) for s in stores]
    for path, (_, info) in zip(stores, read):
        if info.split != split:
            need = "tuning needs a validation store" if split == "val" else "applying needs a test store"
            raise CloudpipeError(f"holds {info.split} probabilities; {need}", path=path)
    return read


def _rows_of(names: list[str], images: list[str]) -> np.ndarray:
    """The row of each of ``names`` in ``images`` (e.g. a store's rows)."""
    row = {name: i for i, name in enumerate(images)}
    return np.array([row[name] for name in names], dtype=np.int64)
