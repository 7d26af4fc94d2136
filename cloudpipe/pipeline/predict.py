"""Gate a segmentation submission with the presence classifier and write the Kaggle CSV.

Blanking needs no mask decoding: a pair judged absent gets an empty ``EncodedPixels``, every
other mask is copied through byte for byte. Rows follow ``sample_submission.csv`` (merged on
``Image_Label``, never by position).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cloudpipe.algorithms.ensemble import mean_probs
from cloudpipe.algorithms.gating import GateSpec, gate
from cloudpipe.algorithms.presence import CLASSIFIER, blend
from cloudpipe.core.profile import active, join_label
from cloudpipe.data.beside import probs_path_for
from cloudpipe.data.kaggle import (
    LABEL_COLUMNS,
    TEST_IMAGES,
    data_inputs,
    list_test_images,
    mask_frame_of,
    read_mask_csv,
    require_dir,
    require_same_images,
    to_layout,
)
from cloudpipe.data.outputs import Inputs, csv_writer
from cloudpipe.data.runfolder import run_inputs
from cloudpipe.engine.settings import InferenceSettings
from cloudpipe.pipeline.ensemble import Ensemble
from cloudpipe.pipeline.gate import GateInputs, Thresholds, resolve_gate

if TYPE_CHECKING:
    from cloudpipe.engine.runner import Runner


def read_segmentation(seg: Path | pd.DataFrame, mask_shape: tuple[int, int] | None = None) -> pd.DataFrame:
    """A segmentation submission (file or DataFrame with ``Image_Label,EncodedPixels``) as a
    validated long frame: every pair once, every RLE valid for ``mask_shape``."""
    mask_shape = mask_shape or active().submission_size
    if isinstance(seg, pd.DataFrame):
        return mask_frame_of(seg, "segmentation DataFrame", shape=mask_shape)
    return read_mask_csv(Path(seg), shape=mask_shape)


@dataclass
class PredictSummary:
    """What :func:`predict_submission` did."""

    submission: pd.DataFrame
    """The gated masks as a long frame (``Image_Label, EncodedPixels, image, class_name``) in
    ``sample_submission.csv``'s order; the file holds it in the profile's submission layout."""
    probs: pd.DataFrame
    """The score each pair was gated on (the classifier's probability, or the class's blend)."""
    thresholds: dict[str, float]
    thresholds_source: str
    kept: dict[str, int]
    """Per class, the (image, class) pairs the gate kept (its mask, empty or not, passed through),
    counted as ``report`` counts its decisions."""
    blanked: dict[str, int]
    """Per class, the pairs the gate judged absent (their masks emptied)."""
    images_per_second: float | None
    """The classifier's speed; None when no class gates on it (no model ran)."""
    spec: GateSpec | None = None

    def line(self) -> str:
        per_class = ", ".join(f"{c} {self.kept[c]}/{self.blanked[c]}" for c in active().classes)
        rule = "; at least one class per image" if self.spec is not None and self.spec.at_least_one else ""
        speed = ", no model run" if self.images_per_second is None else f" at {self.images_per_second:.1f} img/s"
        return (f"{len(self.probs)} images{speed}; pairs kept/blanked (the gate's decisions, as report counts them): {per_class} "
                f"(thresholds: {self.thresholds_source}{rule})")


def predict_submission(seg: Path | pd.DataFrame, run_dir: Path | Sequence[Path], data_dir: Path,
                       out: Path | None = None, *, weights: Sequence[float] | None = None,
                       thresholds: Thresholds = None, mask_shape: tuple[int, int] | None = None,
                       settings: InferenceSettings = InferenceSettings(), overwrite: bool = False,
                       inputs: GateInputs = GateInputs()) -> PredictSummary:
    """Blank the classes of ``seg`` (a file or DataFrame) that the gate judges absent, and
    write the submission to ``out`` (None: nothing) with ``<stem>_probs.csv``, the scores gated on.

    The gate is the first of ``thresholds``, ``RUN/thresholds.json`` of one run, and 0.5 on the
    classifier (:func:`~cloudpipe.pipeline.gate.resolve_gate`); a class gated on another source
    needs its test-side input in ``inputs``. The classifier runs (several: their probabilities
    averaged with ``weights``) only when some class's gate uses it, and only once every input
    is checked. Under ``torchrun`` each rank runs it on its share; rank 0 writes.
    """
    mask_shape = mask_shape or active().submission_size
    from cloudpipe.engine.runner import Plan, Runner

    def declare() -> tuple[Plan, tuple[Ensemble, Path, GateSpec, str]]:
        ensemble = Ensemble.of(run_dir, weights)
        data = require_dir(data_dir)
        spec, source = resolve_gate(ensemble, thresholds, inputs)
        if spec is None:
            spec, source = GateSpec({c: 0.5 for c in active().classes}), "default 0.5"
        if inputs.at_least_one is not None:
            spec = replace(spec, at_least_one=inputs.at_least_one)
        inputs.require(spec.sources)  # before any image is read
        reads = data_inputs(data) | run_inputs(ensemble.runs) | inputs.reads() | Inputs.of(
            seg if isinstance(seg, Path) else None, thresholds if isinstance(thresholds, Path) else None)
        writes = [] if out is None else [out, probs_path_for(out)]
        return Plan(reads, writes, overwrite=overwrite), (ensemble, data, spec, source)

    with Runner.start() as run:
        ensemble, data_dir, spec, source = run.claim(declare)
        summary = _gate_test_images(seg, ensemble, data_dir, spec, source, mask_shape, settings, inputs, run)
        if out is not None:  # a pair: a failure leaves both old files or both new ones
            run.write({probs_path_for(out): csv_writer(summary.probs.reset_index()),  # full precision: what was compared
                       out: csv_writer(to_layout(summary.submission, active().submission_csv))})
    return summary


def _gate_test_images(seg: Path | pd.DataFrame, ensemble: Ensemble, data_dir: Path, spec: GateSpec, source: str,
                      mask_shape: tuple[int, int], settings: InferenceSettings, inputs: GateInputs,
                      run: Runner) -> PredictSummary:
    """The work of :func:`predict_submission` between checking the outputs and writing them."""
    from cloudpipe.engine.infer import predict_presence

    with run.together():  # not nested in another: every rank meets the same gathers
        frame = read_segmentation(seg, mask_shape)
        images = list_test_images(data_dir)
        require_same_images(images, pd.unique(frame["image"]).tolist(), "segmentation predictions",
                            "; --seg wants the test masks of sample_submission.csv's images: predict-seg --split test's "
                            "CSV (RUN/test_seg.csv)")
        others = [s for s in spec.sources if s != CLASSIFIER]
        scores = inputs.scores(images, others, "test", pixel=spec.pixel)
    index = pd.Index(images, name="image")
    started = time.perf_counter()
    if CLASSIFIER in spec.sources:
        paths = [data_dir / TEST_IMAGES / i for i in images]
        scores[CLASSIFIER] = mean_probs([predict_presence(member, paths, settings, desc=f"predict {member.name}", dist=run.dist)
                                         for member in ensemble.runs], ensemble.weights)
    seconds = time.perf_counter() - started
    probs = pd.DataFrame(blend(scores, spec.gates), index=index, columns=list(active().classes))
    gated = gate(frame, probs, spec.thresholds, spec.at_least_one)
    order = pd.DataFrame({"Image_Label": [join_label(i, c) for i in images for c in active().classes]})
    submission = order.merge(gated, on="Image_Label", how="left", validate="one_to_one")
    blanked = submission.groupby("class_name")["absent"].sum()
    kept = (~submission["absent"]).groupby(submission["class_name"]).sum()
    submission = submission[[*LABEL_COLUMNS, "image", "class_name"]]
    return PredictSummary(submission, probs, spec.thresholds, source, {c: int(kept[c]) for c in active().classes},
                          {c: int(blanked[c]) for c in active().classes},
                          len(images) / max(seconds, 1e-9) if CLASSIFIER in spec.sources else None, spec)
