"""Gate a segmentation submission with the presence classifier and write the Kaggle CSV.

Blanking needs no mask decoding: a pair judged absent gets an empty ``EncodedPixels``, every
other mask is copied through byte for byte. Rows follow ``sample_submission.csv`` (merged on
``Image_Label``, never by position).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

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
from cloudpipe.data.outputs import check_output, write_csv
from cloudpipe.data.runfolder import THRESHOLDS_JSON
from cloudpipe.engine.settings import InferenceSettings
from cloudpipe.pipeline.tune import load_thresholds


def resolve_thresholds(run_dir: Path, thresholds_file: Path | None, threshold: float | None) -> tuple[dict[str, float], str]:
    """Per-class thresholds and where they came from.

    Precedence: ``--thresholds FILE``, then an explicit ``--threshold T``, then
    ``RUN_DIR/thresholds.json`` (written by tune-threshold), then 0.5.
    """
    if thresholds_file is not None and threshold is not None:
        raise CloudpipeError("give --thresholds FILE or --threshold T, not both")
    if thresholds_file is not None:
        return load_thresholds(thresholds_file), str(thresholds_file)
    if threshold is not None:
        t = check_threshold(threshold, "--threshold")
        return {c: t for c in CLASSES}, f"--threshold {t:g}"
    tuned = Path(run_dir) / THRESHOLDS_JSON
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
    run_dir: Path,
    data_dir: Path,
    out: Path | None = None,
    *,
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
        run_dir: classifier run (``best.pt`` or ``fold*/best.pt``).
        data_dir: Kaggle folder with ``test_images/`` (and ``sample_submission.csv``).
        out: submission to write (with ``<stem>_probs.csv`` beside it); None writes nothing.
        settings: how to run the classifier.

    Returns:
        The gated submission (sample order) and its summary.
    """
    from cloudpipe.engine.infer import predict_presence

    data_dir = require_dir(data_dir)
    thresholds, source = resolve_thresholds(run_dir, thresholds_file, threshold)
    if out is not None:
        inputs = [data_dir / SAMPLE_SUBMISSION_CSV] + ([seg] if isinstance(seg, Path) else [])
        check_output(out, overwrite=overwrite, inputs=inputs)
        check_output(probs_path_for(out), overwrite=overwrite, inputs=inputs)
    frame = read_segmentation(seg, mask_shape)
    images = list_test_images(data_dir)
    require_same_images(images, pd.unique(frame["image"]).tolist(), "segmentation predictions")
    started = time.perf_counter()
    probs = predict_presence(run_dir, [data_dir / TEST_IMAGES / i for i in images], settings)
    seconds = time.perf_counter() - started
    probs = pd.DataFrame(probs, index=pd.Index(images, name="image"), columns=list(CLASSES))
    gated = gate(frame, probs, thresholds)
    order = pd.DataFrame({"Image_Label": [join_label(i, c) for i in images for c in CLASSES]})
    submission = order.merge(gated, on="Image_Label", how="left", validate="one_to_one")
    blanked = submission.groupby("class_name")["blanked"].sum()
    kept = (submission["EncodedPixels"] != "").groupby(submission["class_name"]).sum()
    submission = submission[list(CSV_COLUMNS)]
    if out is not None:
        write_csv(probs.reset_index(), probs_path_for(out), float_format="%.6f")
        write_csv(submission, out)
    return PredictSummary(submission, probs, thresholds, source, {c: int(kept[c]) for c in CLASSES},
                          {c: int(blanked[c]) for c in CLASSES}, len(images) / max(seconds, 1e-9))
