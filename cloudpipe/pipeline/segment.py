"""``predict-seg``: segmentation masks as a Kaggle CSV, with tuned post-processing, from one
run or the weighted mean of several.

Probabilities are streamed from each model, resized to the profile's submission size on the device and kept as
uint8 in a memory map, so memory stays flat (N runs cost N passes and the memory of one). Under
``torchrun`` the images are shared out and joined by
:meth:`~cloudpipe.engine.runner.Runner.predict_store`. The store is kept beside the CSV for
later ensembles and re-tuning; post-processing is tuned or applied by
:mod:`cloudpipe.pipeline.seg_masks`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from cloudpipe.algorithms.ensemble import RunningMean
from cloudpipe.algorithms.postprocess import Step
from cloudpipe.algorithms.robust import check_rule
from cloudpipe.core.choices import Rule
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.profile import active
from cloudpipe.data.beside import postprocess_path_for
from cloudpipe.data.kaggle import TEST_IMAGES, TRAIN_IMAGES, data_inputs, list_test_images, require_dir
from cloudpipe.data.outputs import Inputs
from cloudpipe.data.probstore import StoreInfo, probability_store
from cloudpipe.data.runfolder import POSTPROCESS_JSON, run_inputs
from cloudpipe.engine.config import load_run_config
from cloudpipe.engine.settings import InferenceSettings
from cloudpipe.pipeline.ensemble import Ensemble, require_same_validation
from cloudpipe.pipeline.seg_masks import MaskOutputs, SegPrediction, Tuning, input_files, rows_of, steps_of, test_postprocess, tune_and_write, write_outputs
from cloudpipe.pipeline.sources import Predicted
from cloudpipe.pipeline.validation import validation_sets

if TYPE_CHECKING:  # torch is imported where a model runs: tune-seg and apply-seg start without it
    import torch

    from cloudpipe.engine.runner import Runner


def predict_segmentation(run_dirs: Path | Sequence[Path], data_dir: Path, split: Literal["val", "test"], out: Path, *,
                         weights: Sequence[float] | None = None, postprocess: Path | None = None,
                         tuning: Tuning = Tuning(), settings: InferenceSettings = InferenceSettings(batch_size=8),
                         overwrite: bool = False, keep_store: bool = True) -> SegPrediction | None:
    """Write the masks of one segmentation run, or of the weighted mean of several (which may
    differ in architecture and image size), as a Kaggle CSV, with the gate inputs made of its
    predictions beside it (:func:`~cloudpipe.pipeline.sources.produced_by`), replaced together.

    ``val``: the runs' validation images (out-of-fold; the same for every run), post-processing
    tuned (``tuning``) and saved to ``RUN/seg_postprocess.json`` for one run, to
    ``<stem>_postprocess.json`` beside ``out`` for an ensemble. ``test``: the test images in
    ``sample_submission.csv`` order, post-processed by ``postprocess`` (default: the run's own
    file; an ensemble must name one tuned for these runs and weights).
    ``keep_store=False`` writes no input written with the store (and removes an earlier one
    beside ``out``, which would no longer match it).

    Returns None on the ranks of a ``torchrun`` job but rank 0, which writes and reports.
    """
    from cloudpipe.engine.runner import Plan, Runner

    def declare() -> tuple[Plan, tuple[Ensemble, Path, tuple[Step, ...], Rule, Path | None]]:
        ensemble = Ensemble.of(run_dirs, weights)
        data = require_dir(data_dir)
        if split == "val" and postprocess is not None:
            raise CloudpipeError("--postprocess is read by --split test; --split val tunes and writes it")
        if split == "test" and tuning.steps is not None:
            raise CloudpipeError("--steps is tuned by --split val; --split test applies the tuned file's steps")
        post_out = None if split == "test" else (
            ensemble.runs[0] / POSTPROCESS_JSON if ensemble.single else postprocess_path_for(out))
        own = [post_out] if post_out is not None and ensemble.single else []  # the run's own file, re-tuned
        inputs, dropped = input_files(out, keep_store)
        writes = [out, *inputs] + ([post_out] if post_out is not None and not own else [])
        # every file of every member run is an input, never replaced, even with --overwrite: only a single
        # run's own seg_postprocess.json is re-tuned by --split val
        reads = data_inputs(data) | run_inputs(ensemble.runs, writes=own) | Inputs.of(postprocess)
        writes += dropped  # removed: they would not match
        plan = Plan(reads, writes, replaces=own, overwrite=overwrite)
        return plan, (ensemble, data, steps_of(tuning.steps), check_rule(tuning.choice), post_out)

    with Runner.start() as run:
        ensemble, data_dir, tuned_steps, choice, post_out = run.claim(declare)
        target = MaskOutputs(out, post_out, run.write, keep_store=keep_store)
        return _predict_and_write(ensemble, data_dir, split, target, postprocess, tuned_steps, choice, settings, run)


def _predict_and_write(ensemble: Ensemble, data_dir: Path, split: Literal["val", "test"], target: MaskOutputs,
                       postprocess: Path | None, steps: tuple[Step, ...], choice: Rule,
                       settings: InferenceSettings, run: Runner) -> SegPrediction | None:
    """The work of :func:`predict_segmentation` once its outputs are checked and locked. Under
    ``torchrun`` each rank predicts its share of the images; rank 0 tunes and writes."""
    from cloudpipe.engine.devices import resolve_device

    out = target.out
    with run.together():  # a bad file or image on one rank stops every rank with its error
        device = resolve_device(settings.device, run.dist)
        started = time.perf_counter()
        if split == "test":
            for member in ensemble.runs:
                load_run_config(member, "segmentation")
            post = test_postprocess(ensemble, postprocess)  # read before inference: a bad file fails fast
            names = list_test_images(data_dir)
            runs = [[(member, names, data_dir / TEST_IMAGES)] for member in ensemble.runs]
        else:
            sets = [validation_sets(run, data_dir, "segmentation") for run in ensemble.runs]
            require_same_validation(ensemble.runs, [[i for s in splits for i in s.val] for _, splits in sets])
            data = sets[0][0]
            names = [i for s in sets[0][1] for i in s.val]
            runs = [[(s.folder, s.val, data_dir / TRAIN_IMAGES) for s in splits] for _, splits in sets]

    def predict(mine: list[str]) -> tuple[np.ndarray, pd.DataFrame | None]:
        share = set(mine)
        parts = [[(folder, [i for i in images if i in share], image_dir) for folder, images, image_dir in run]
                 for run in runs]
        return _predict_to_store(ensemble, parts, mine, out.parent, device, settings)

    store, presence = run.predict_store(names, predict, out)
    if store is None:  # another rank's: rank 0 tunes and writes
        return None
    speed = len(names) / (time.perf_counter() - started)
    made = Predicted(store, StoreInfo.of(split, names, **ensemble.record()), presence)
    if split == "test":
        result = write_outputs(SegPrediction(out, len(names), post, 0.0), store, names, ensemble, target, made)
    else:
        result = tune_and_write(store, names, data, ensemble, target, steps, choice, made)
    result.images_per_second = speed
    return result


Part = tuple[Path, list[str], Path]
"""A model folder (a run, or one fold of it), the images it predicts, and their folder."""


def _predict_to_store(ensemble: Ensemble, runs: list[list[Part]], names: list[str], folder: Path,
                      device: torch.device, settings: InferenceSettings) -> tuple[np.memmap, pd.DataFrame | None]:
    """Stream every run's parts through their models into a uint8 memory map (n, classes, H, W) at the submission size
    in ``folder``, rows in ``names`` order (several runs: their weighted mean, run by run via a
    float32 map), and the weighted mean of the heads' presence when every model has a head."""
    import torch

    from cloudpipe.engine.infer import load_run, stream_probs

    shape = (len(names), len(active().classes), *active().submission_size)
    store = probability_store(folder, shape)
    mean = None if ensemble.single else RunningMean(probability_store(folder, shape, np.float32))
    presence, every_head = np.zeros((len(names), len(active().classes))), True
    for r, (run, parts, weight) in enumerate(zip(ensemble.runs, runs, ensemble.weights)):
        desc = f"predict-seg {run.name}" + ("" if ensemble.single else f" ({r + 1}/{len(ensemble.runs)})")
        for model_dir, images, image_dir in parts:
            if not images:  # e.g. a fold none of whose images are this rank's
                continue
            model = load_run(model_dir, "segmentation", device, allow_partial=settings.allow_partial)
            rows = rows_of(images, names)
            for indices, probs, head in stream_probs(model, [image_dir / n for n in images], device, settings, desc=desc):
                every_head = every_head and head is not None
                if head is not None:
                    presence[rows[indices]] += weight * head.cpu().numpy()
                small = torch.nn.functional.interpolate(probs, size=active().submission_size, mode="bilinear", align_corners=False)
                values = (small * 255).round().to(torch.uint8).cpu().numpy()
                if mean is None:
                    store[rows[indices]] = values
                else:
                    mean.add(rows[indices], values, weight)
    heads = pd.DataFrame(presence, index=pd.Index(names, name="image"), columns=list(active().classes)) if every_head else None
    return (store if mean is None else mean.write(store)), heads
