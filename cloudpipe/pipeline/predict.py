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

import pandas as pd

from cloudpipe.algorithms.ensemble import mean_probs
from cloudpipe.algorithms.gating import gate
from cloudpipe.algorithms.thresholds import check_threshold
from cloudpipe.core.competition import (
    CLASSES,
    CSV_COLUMNS,
    SUBMISSION_SHAPE,
    join_label,
)
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.kaggle import (
    SAMPLE_SUBMISSION_CSV,
    TEST_IMAGES,
    check_mask_frame,
    list_test_images,
    read_mask_csv,
    require_dir,
    require_same_images,
)
from cloudpipe.data.outputs import claim_output, csv_writer, write_files
from cloudpipe.data.runfolder import THRESHOLDS_JSON, read_json
from cloudpipe.engine.settings import InferenceSettings
from cloudpipe.pipeline.ensemble import Ensemble
from cloudpipe.pipeline.tune import load_thresholds


def resolve_thresholds(runs: Path | Ensemble, thresholds_file: Path | None, threshold: float | None) -> tuple[dict[str, float], str]:
    """Per-class thresholds and where they came from.

    Precedence: ``--thresholds FILE`` (which must record these runs and weights when it
    records any, and must for an ensemble), then an explicit ``--threshold T``, then
    ``RUN_DIR/thresholds.json`` (written by tune-threshold) for one run, then 0.5.
    """
    ensemble = runs if isinstance(runs, Ensemble) else Ensemble.of(runs)
    if thresholds_file is not None and threshold is not None:
        raise CloudpipeError("give --thresholds FILE or --threshold T, not both")
    if thresholds_file is not None:
        ensemble.check_tuned_for(read_json(thresholds_file, "thresholds"), thresholds_file, "thresholds")
        return load_thresholds(thresholds_file), str(thresholds_file)
    if threshold is not None:
        t = check_threshold(threshold, "--threshold")
        return {c: t for c in CLASSES}, f"--threshold {t:g}"
    if not ensemble.single:
        raise CloudpipeError("an ensemble of classifier runs needs --thresholds FILE (tune-threshold with the same --run "
                             "and --weight options and --out FILE) or --threshold T")
    tuned = ensemble.runs[0] / THRESHOLDS_JSON
    if tuned.exists():
        return load_thresholds(tuned), str(tuned)
    return {c: 0.5 for c in CLASSES}, "default 0.5"


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
    thresholds: dict[str, float]
    thresholds_source: str
    kept: dict[str, int]
    blanked: dict[str, int]
    images_per_second: float

    def line(self) -> str:
        per_class = ", ".join(f"{c} {self.kept[c]}/{self.blanked[c]}" for c in CLASSES)
        return (f"{len(self.probs)} images at {self.images_per_second:.1f} img/s; masks kept/blanked: {per_class} "
                f"(thresholds: {self.thresholds_source})")


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
) -> PredictSummary:
    """Run the classifier over the test images and blank absent classes of ``seg``.

    Every input is checked before the first image is decoded (CSV, RLE, image sets, image
    headers, thresholds, output paths); outputs are written atomically.

    Args:
        seg: segmentation submission, file or DataFrame.
        run_dir: classifier run (``best.pt`` or ``fold*/best.pt``), or several: their
            presence probabilities are averaged with ``weights`` (equal when None).
        data_dir: Kaggle folder with ``test_images/`` (and ``sample_submission.csv``).
        out: submission to write (with ``<stem>_probs.csv`` beside it); None writes nothing.
        settings: how to run the classifier.

    Returns:
        The gated submission (sample order) and its summary.
    """
    ensemble = Ensemble.of(run_dir, weights)
    data_dir = require_dir(data_dir)
    thresholds, source = resolve_thresholds(ensemble, thresholds_file, threshold)
    with ExitStack() as claims:
        if out is not None:  # both outputs checked and locked until both are written
            inputs = [data_dir / SAMPLE_SUBMISSION_CSV] + ([seg] if isinstance(seg, Path) else [])
            for path in (out, probs_path_for(out)):
                claims.enter_context(claim_output(path, overwrite=overwrite, inputs=inputs,
                                                  input_dirs=[data_dir / TEST_IMAGES]))
        summary = _gate_test_images(seg, ensemble, data_dir, thresholds, source, mask_shape, settings)
        if out is not None:  # a pair: a failure leaves both old files or both new ones
            write_files({probs_path_for(out): csv_writer(summary.probs.reset_index(), float_format="%.6f"),
                         out: csv_writer(summary.submission)})
    return summary


def _gate_test_images(seg: Path | pd.DataFrame, ensemble: Ensemble, data_dir: Path, thresholds: dict[str, float],
                      source: str, mask_shape: tuple[int, int], settings: InferenceSettings) -> PredictSummary:
    """The work of :func:`predict_submission` between checking the outputs and writing them."""
    from cloudpipe.engine.infer import predict_presence

    frame = read_segmentation(seg, mask_shape)
    images = list_test_images(data_dir)
    require_same_images(images, pd.unique(frame["image"]).tolist(), "segmentation predictions")
    started = time.perf_counter()
    paths = [data_dir / TEST_IMAGES / i for i in images]
    probs = mean_probs([predict_presence(run, paths, settings, desc=f"predict {run.name}") for run in ensemble.runs],
                       ensemble.weights)
    seconds = time.perf_counter() - started
    probs = pd.DataFrame(probs, index=pd.Index(images, name="image"), columns=list(CLASSES))
    gated = gate(frame, probs, thresholds)
    order = pd.DataFrame({"Image_Label": [join_label(i, c) for i in images for c in CLASSES]})
    submission = order.merge(gated, on="Image_Label", how="left", validate="one_to_one")
    blanked = submission.groupby("class_name")["blanked"].sum()
    kept = (submission["EncodedPixels"] != "").groupby(submission["class_name"]).sum()
    submission = submission[list(CSV_COLUMNS)]
    return PredictSummary(submission, probs, thresholds, source, {c: int(kept[c]) for c in CLASSES},
                          {c: int(blanked[c]) for c in CLASSES}, len(images) / max(seconds, 1e-9))
