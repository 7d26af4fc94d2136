"""``predict-seg``: segmentation masks as a Kaggle CSV, with tuned post-processing, from one
run or the weighted mean of several.

Probabilities are streamed from each model, resized to the submission size (350 x 525) on the
device and kept as uint8 per pixel in a memory map, so memory stays flat; several runs are
averaged run by run (:mod:`cloudpipe.algorithms.ensemble`). Under ``torchrun`` the images are
shared out and the shares joined by one engine call
(:meth:`~cloudpipe.engine.devices.Dist.predict_store`). The probabilities are kept beside the
CSV (:mod:`cloudpipe.data.probstore`) for later ensembles and re-tuning; post-processing is
tuned (``--split val``) or applied (``--split test``) as ``tune-seg`` and ``apply-seg`` do it
(:mod:`cloudpipe.pipeline.retune`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from cloudpipe.algorithms.ensemble import RunningMean
from cloudpipe.algorithms.postprocess import (
    PostProcess,
    Step,
)
from cloudpipe.algorithms.robust import check_rule
from cloudpipe.core.choices import DEFAULT_RULE, Rule
from cloudpipe.core.competition import (
    CLASSES,
    SUBMISSION_SHAPE,
)
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.kaggle import (
    TEST_IMAGES,
    TRAIN_IMAGES,
    data_inputs,
    list_test_images,
    require_dir,
)
from cloudpipe.data.outputs import Inputs
from cloudpipe.data.probstore import StoreInfo, presence_path, probability_store, store_paths
from cloudpipe.data.runfolder import POSTPROCESS_JSON, run_inputs
from cloudpipe.engine.config import load_run_config
from cloudpipe.engine.settings import InferenceSettings
from cloudpipe.pipeline.ensemble import Ensemble, require_same_validation
from cloudpipe.pipeline.retune import (
    SegPrediction,
    postprocess_path_for,
    rows_of,
    steps_of,
    test_postprocess,
    tune_and_write,
    write_outputs,
)
from cloudpipe.pipeline.validation import validation_sets

if TYPE_CHECKING:  # torch is imported where a model runs: tune-seg and apply-seg start without it
    import torch

    from cloudpipe.engine.devices import Dist


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
    keep_store: bool = True,
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
    ``keep_store=False`` writes no ``<stem>_probs.npy``/``.json`` (and removes an earlier one
    beside ``out``, which would no longer match it): the masks alone, for ``tune-seg``,
    ``apply-seg`` and gating on pixel statistics have no store to read.

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
                tuned_steps, choice = steps_of(steps), check_rule(choice)
                post_out = None if split == "test" else (
                    ensemble.runs[0] / POSTPROCESS_JSON if ensemble.single else postprocess_path_for(out))
                outputs = [out, *store_paths(out), presence_path(out)] + (
                    [post_out] if post_out is not None and not ensemble.single else [])
                # never replaced, even with --overwrite; the run's own seg_postprocess.json is re-tuned by --split val
                inputs = data_inputs(data_dir) | run_inputs(ensemble.runs, writes=[post_out] if post_out else []) | \
                    Inputs.of(postprocess)
                own = [post_out] if post_out is not None and ensemble.single else []  # re-tuned, never refused, but locked
                claims.enter_context(dist.claim_outputs(outputs, inputs, overwrite=overwrite, locked=own))
            return _predict_and_write(ensemble, data_dir, split, out, postprocess, post_out, tuned_steps, choice,
                                      settings, dist, keep_store)
    finally:
        dist.close()


def _predict_and_write(ensemble: Ensemble, data_dir: Path, split: Literal["val", "test"], out: Path,
                       postprocess: Path | None, post_out: Path | None, steps: tuple[Step, ...], choice: Rule,
                       settings: InferenceSettings, dist: Dist, keep_store: bool = True) -> SegPrediction:
    """The work of :func:`predict_segmentation` once its outputs are checked and locked. Under
    ``torchrun`` each rank predicts its share of the images (:meth:`~Dist.predict_store`); rank 0
    tunes and writes, and the other ranks return what they predicted, writing nothing."""
    from cloudpipe.engine.devices import resolve_device

    with dist.together():  # a bad file or image on one rank stops every rank with its error
        device = resolve_device(settings.device, dist)
        started = time.perf_counter()
        if split == "test":
            for run in ensemble.runs:
                load_run_config(run, "segmentation")
            post = test_postprocess(ensemble, postprocess)  # read before inference: a bad file fails fast
            names = list_test_images(data_dir)
            runs = [[(run, names, data_dir / TEST_IMAGES)] for run in ensemble.runs]
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

    store, presence = dist.predict_store(names, predict, out)
    if store is None:  # another rank's: rank 0 tunes and writes
        mine = len(dist.shard(names))
        return SegPrediction(out, mine, PostProcess(), mine / (time.perf_counter() - started))
    speed = len(names) / (time.perf_counter() - started)
    info = StoreInfo(split, names, **ensemble.record()) if keep_store else None
    if split == "test":
        result = write_outputs(SegPrediction(out, len(names), post, speed, presence=presence), store, names, info, None,
                               ensemble)
    else:
        result = tune_and_write(store, names, info, data, ensemble, out, post_out, speed, steps, choice, presence)
    if not keep_store:
        for stale in store_paths(out):  # an earlier store would not match the new masks
            stale.unlink(missing_ok=True)
    return result


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
            rows = rows_of(images, names)
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
