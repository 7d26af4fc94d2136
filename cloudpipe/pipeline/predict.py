"""Gate a segmentation submission with the presence classifier and write the Kaggle CSV.

Blanking needs no mask decoding: a pair judged absent gets an empty ``EncodedPixels``, every
other mask is copied through byte for byte. Rows follow ``sample_submission.csv`` (merged on
``Image_Label``, never by position).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cloudpipe.algorithms.ensemble import mean_probs
from cloudpipe.algorithms.gating import GateSpec, gate
from cloudpipe.algorithms.presence import CLASSIFIER, blend
from cloudpipe.algorithms.thresholds import check_threshold
from cloudpipe.core.competition import (
    CLASSES,
    CSV_COLUMNS,
    SUBMISSION_SHAPE,
    join_label,
)
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.kaggle import (
    TEST_IMAGES,
    check_mask_frame,
    data_inputs,
    list_test_images,
    read_mask_csv,
    require_dir,
    require_same_images,
)
from cloudpipe.data.outputs import Inputs, claim_outputs, csv_writer, write_files
from cloudpipe.data.probstore import info_path
from cloudpipe.data.runfolder import THRESHOLDS_JSON, run_inputs
from cloudpipe.engine.settings import InferenceSettings
from cloudpipe.pipeline.ensemble import Ensemble
from cloudpipe.pipeline.sources import require_inputs, source_scores
from cloudpipe.pipeline.tune import load_tuned_gate

if TYPE_CHECKING:
    from cloudpipe.engine.devices import Dist


def resolve_thresholds(runs: Path | Ensemble, thresholds_file: Path | None, threshold: float | None) -> tuple[dict[str, float], str]:
    """Per-class thresholds and where they came from (see :func:`resolve_gate`)."""
    spec, source = resolve_gate(runs, thresholds_file, threshold)
    return spec.thresholds, source


def resolve_gate(runs: Path | Ensemble, thresholds_file: Path | None, threshold: float | None,
                 seg_store: Path | None = None) -> tuple[GateSpec, str]:
    """The gate (thresholds, the source of every class, the at-least-one rule) and where it
    came from.

    Precedence: ``--thresholds FILE``, then an explicit ``--threshold T`` (on the classifier),
    then ``RUN_DIR/thresholds.json`` (written by tune-threshold) for one run, then 0.5 on the
    classifier. A file must be tuned for these runs and weights (and must say so for an
    ensemble), and for the segmentation runs of ``seg_store`` when it gates on them
    (:func:`~cloudpipe.pipeline.tune.load_tuned_gate`).
    """
    ensemble = runs if isinstance(runs, Ensemble) else Ensemble.of(runs)
    if thresholds_file is not None and threshold is not None:
        raise CloudpipeError("give --thresholds FILE or --threshold T, not both")
    if thresholds_file is None and threshold is not None:
        t = check_threshold(threshold, "--threshold")
        return GateSpec({c: t for c in CLASSES}), f"--threshold {t:g}"
    if thresholds_file is None:
        thresholds_file = ensemble.own_file(THRESHOLDS_JSON, "an ensemble of classifier runs needs --thresholds FILE "
                                            "(tune-threshold with the same --run and --weight options and --out FILE) "
                                            "or --threshold T")
        if not thresholds_file.exists():
            return GateSpec({c: 0.5 for c in CLASSES}), "default 0.5"
    return load_tuned_gate(thresholds_file, ensemble, seg_store), str(thresholds_file)


def read_segmentation(seg: Path | pd.DataFrame, mask_shape: tuple[int, int] = SUBMISSION_SHAPE) -> pd.DataFrame:
    """A segmentation submission (file or DataFrame with ``Image_Label,EncodedPixels``) as a
    validated long frame: every pair once, every RLE valid for ``mask_shape``."""
    if isinstance(seg, pd.DataFrame):
        missing = [c for c in CSV_COLUMNS if c not in seg.columns]
        if missing:
            raise CloudpipeError(f"segmentation DataFrame lacks column(s) {', '.join(missing)}")
        frame = seg[list(CSV_COLUMNS)].fillna("").astype(str)
        return check_mask_frame(frame, "segmentation DataFrame", shape=mask_shape)
    return read_mask_csv(Path(seg), shape=mask_shape)


@dataclass
class PredictSummary:
    """What :func:`predict_submission` did."""

    submission: pd.DataFrame
    probs: pd.DataFrame
    """The score each pair was gated on (the classifier's probability, or the class's blend)."""
    thresholds: dict[str, float]
    thresholds_source: str
    kept: dict[str, int]
    blanked: dict[str, int]
    images_per_second: float | None
    """The classifier's speed; None when no class gates on it (no model ran)."""
    spec: GateSpec | None = None

    def line(self) -> str:
        per_class = ", ".join(f"{c} {self.kept[c]}/{self.blanked[c]}" for c in CLASSES)
        rule = "; at least one class per image" if self.spec is not None and self.spec.at_least_one else ""
        speed = ", no model run" if self.images_per_second is None else f" at {self.images_per_second:.1f} img/s"
        return (f"{len(self.probs)} images{speed}; masks kept/blanked: {per_class} "
                f"(thresholds: {self.thresholds_source}{rule})")


def probs_path_for(out: Path) -> Path:
    """Where the probabilities go beside a submission: ``<stem>_probs.csv``."""
    return out.with_name(f"{out.stem}_probs.csv")


def predict_submission(
    seg: Path | pd.DataFrame,
    run_dir: Path | Sequence[Path],
    data_dir: Path,
    out: Path | None = None,
    *,
    weights: Sequence[float] | None = None,
    thresholds_file: Path | None = None,
    threshold: float | None = None,
    mask_shape: tuple[int, int] = SUBMISSION_SHAPE,
    settings: InferenceSettings = InferenceSettings(),
    overwrite: bool = False,
    seg_store: Path | None = None,
    presence: Path | None = None,
    at_least_one: bool | None = None,
) -> PredictSummary:
    """Run the classifier over the test images and blank absent classes of ``seg``.

    The gate is the thresholds file's (:func:`resolve_gate`): a class may be gated on another
    source or a blend, whose test-side input must then be given (``seg_store``: the test
    probability store, for pixel statistics; ``presence``: the segmentation head's test
    presence CSV). The classifier runs only when some class's gate uses it.

    Every input is checked before the first image is decoded (CSV, RLE, image sets, image
    headers, thresholds, output paths); outputs are written atomically.

    Args:
        seg: segmentation submission, file or DataFrame.
        run_dir: classifier run (``best.pt`` or ``fold*/best.pt``), or several: their
            presence probabilities are averaged with ``weights`` (equal when None).
        data_dir: Kaggle folder with ``test_images/`` (and ``sample_submission.csv``).
        out: submission to write (with ``<stem>_probs.csv``, the scores gated on, beside it);
            None writes nothing.
        settings: how to run the classifier.
        seg_store: test probability store (``predict-seg --split test``'s ``<stem>_probs.npy``).
        presence: the head's test presence CSV (``<stem>_presence.csv``).
        at_least_one: apply the at-least-one-class rule (None: as the thresholds file says).

    Raises:
        CloudpipeError: bad inputs, or a gate that needs an input not given.

    Returns:
        The gated submission (sample order) and its summary.
    """
    from cloudpipe.engine.devices import Dist

    dist = Dist.from_env()
    try:
        return _predict_submission(seg, run_dir, data_dir, out, weights, thresholds_file, threshold, mask_shape,
                                   settings, overwrite, seg_store, presence, at_least_one, dist)
    finally:
        dist.close()


def _predict_submission(seg, run_dir, data_dir, out, weights, thresholds_file, threshold, mask_shape, settings,
                        overwrite, seg_store, presence, at_least_one, dist: Dist) -> PredictSummary:
    """:func:`predict_submission` on one rank: under ``torchrun`` each rank runs the classifier
    on its share of the images, every rank checks the outputs, and only rank 0 locks and
    writes them."""
    with ExitStack() as claims:
        with dist.together():  # every rank checks (rank 0 reports); rank 0, the one that writes, locks both outputs
            ensemble = Ensemble.of(run_dir, weights)
            data_dir = require_dir(data_dir)
            spec, source = resolve_gate(ensemble, thresholds_file, threshold, seg_store)
            if at_least_one is not None:
                spec = GateSpec(spec.thresholds, spec.gates, at_least_one, spec.pixel)
            require_inputs(spec.sources, presence=presence, seg_store=seg_store)  # before any image is read
            inputs = data_inputs(data_dir) | run_inputs(ensemble.runs) | Inputs.of(
                seg if isinstance(seg, Path) else None, presence, seg_store, seg_store and info_path(seg_store),
                thresholds_file)
            outputs = [] if out is None else [out, probs_path_for(out)]
            claims.enter_context(claim_outputs(outputs, inputs, overwrite=overwrite, lock=dist.is_main))
        summary = _gate_test_images(seg, ensemble, data_dir, spec, source, mask_shape, settings, seg_store, presence,
                                    dist)
        if out is not None and dist.is_main:  # a pair: a failure leaves both old files or both new ones
            write_files({probs_path_for(out): csv_writer(summary.probs.reset_index(), float_format="%.6f"),
                         out: csv_writer(summary.submission)})
    return summary


def _gate_test_images(seg: Path | pd.DataFrame, ensemble: Ensemble, data_dir: Path, spec: GateSpec, source: str,
                      mask_shape: tuple[int, int], settings: InferenceSettings, seg_store: Path | None,
                      presence: Path | None, dist: Dist | None = None) -> PredictSummary:
    """The work of :func:`predict_submission` between checking the outputs and writing them."""
    from cloudpipe.engine.devices import Dist
    from cloudpipe.engine.infer import predict_presence

    dist = dist or Dist()
    with dist.together():  # not nested in another: every rank meets the same gathers
        frame = read_segmentation(seg, mask_shape)
        images = list_test_images(data_dir)
        require_same_images(images, pd.unique(frame["image"]).tolist(), "segmentation predictions")
        others = [s for s in spec.sources if s != CLASSIFIER]
        scores = source_scores(images, others, "test", presence=presence, seg_store=seg_store, pixel=spec.pixel)
    index = pd.Index(images, name="image")
    started = time.perf_counter()
    if CLASSIFIER in spec.sources:
        paths = [data_dir / TEST_IMAGES / i for i in images]
        scores[CLASSIFIER] = mean_probs([predict_presence(run, paths, settings, desc=f"predict {run.name}", dist=dist)
                                         for run in ensemble.runs], ensemble.weights)
    seconds = time.perf_counter() - started
    probs = pd.DataFrame(blend(scores, spec.gates), index=index, columns=list(CLASSES))
    gated = gate(frame, probs, spec.thresholds, spec.at_least_one)
    order = pd.DataFrame({"Image_Label": [join_label(i, c) for i in images for c in CLASSES]})
    submission = order.merge(gated, on="Image_Label", how="left", validate="one_to_one")
    blanked = submission.groupby("class_name")["blanked"].sum()
    kept = (submission["EncodedPixels"] != "").groupby(submission["class_name"]).sum()
    submission = submission[list(CSV_COLUMNS)]
    return PredictSummary(submission, probs, spec.thresholds, source, {c: int(kept[c]) for c in CLASSES},
                          {c: int(blanked[c]) for c in CLASSES},
                          len(images) / max(seconds, 1e-9) if CLASSIFIER in spec.sources else None, spec)
