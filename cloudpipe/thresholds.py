"""Per-class presence thresholds: tuned on the competition metric, kept as data in a JSON file.

A pair (image, class) is blanked when its presence probability is below the class threshold.
Blanking turns the pair's Dice from its segmentation Dice into 1 (class absent) or 0 (class
present). Dice is a mean over pairs, so each class's threshold is searched on its own, and
exactly: every distinct probability is a candidate, scored for all candidates at once with one
sort and cumulative sums over per-pair scores computed once (:func:`sweep`).

``tune-threshold`` writes ``thresholds.json``; ``predict`` reads it with :func:`load_thresholds`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cloudpipe.competition import CLASSES, SUBMISSION_SHAPE
from cloudpipe.data import (
    TRAIN_CSV,
    TRAIN_IMAGES,
    presence,
    read_csv_text,
    read_mask_csv,
    read_train,
    require_dir,
    to_wide,
    validate_rle_column,
)
from cloudpipe.errors import CloudpipeError
from cloudpipe.images import check_images
from cloudpipe.metrics import pair_stats
from cloudpipe.outputs import check_output, write_text
from cloudpipe.runs import VAL_PROBS_CSV, validation_parts

THRESHOLDS_JSON = "thresholds.json"
PROBS_COLUMNS: tuple[str, ...] = ("image", *CLASSES)
TIE_TOLERANCE = 1e-12
"""Scores this close to the best count as ties (cumulative sums round differently)."""

Objective = Literal["dice", "accuracy"]
METRIC_NAMES: dict[str, str] = {"dice": "dice", "accuracy": "acc"}


def check_threshold(value: object, what: str) -> float:
    """A threshold as float in [0, 1], or a CloudpipeError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise CloudpipeError(f"{what} threshold {value!r} is not a number in [0, 1]")
    return float(value)


def load_thresholds(path: Path) -> dict[str, float]:
    """Read ``{"Fish": t, "Flower": t, "Gravel": t, "Sugar": t, ...}`` (extra keys ignored).

    Raises:
        CloudpipeError: unreadable JSON, a missing class, or a value outside [0, 1].
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CloudpipeError("thresholds file not found", path=path) from None
    except (OSError, ValueError) as err:
        raise CloudpipeError(f"not a readable JSON file ({err})", path=path) from None
    if not isinstance(data, dict):
        raise CloudpipeError("thresholds must be a JSON object of class: threshold", path=path)
    missing = [c for c in CLASSES if c not in data]
    if missing:
        raise CloudpipeError(f"no threshold for {', '.join(missing)}", path=path)
    try:
        return {c: check_threshold(data[c], c) for c in CLASSES}
    except CloudpipeError as err:
        raise CloudpipeError(str(err), path=path) from None


# ----------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class Sweep:
    """One class's mean score at every candidate threshold.

    Attributes:
        thresholds: (m,) candidates, ascending: 0, every distinct probability, and the next
            float above the largest one (when that is still <= 1), which blanks every pair.
        scores: (m,) mean per-pair score when pairs with probability < threshold are blanked.
        best: index of the chosen candidate (the lowest one of the best score).
    """

    thresholds: np.ndarray
    scores: np.ndarray
    best: int

    @property
    def threshold(self) -> float:
        """The chosen threshold."""
        return float(self.thresholds[self.best])

    @property
    def score(self) -> float:
        """The mean score at the chosen threshold."""
        return float(self.scores[self.best])

    def score_at(self, threshold: float) -> float:
        """Mean score at any threshold: that of the smallest candidate >= ``threshold``, which
        blanks exactly the same pairs (no probability lies between them)."""
        j = min(int(np.searchsorted(self.thresholds, threshold, side="left")), len(self.thresholds) - 1)
        return float(self.scores[j])


def candidate_thresholds(probs: np.ndarray) -> np.ndarray:
    """0 (blank nothing), every distinct probability, and just above the largest (blank all).

    The last one is left out when the largest probability is 1: no threshold in [0, 1] can
    blank a pair of probability 1.
    """
    probs = np.asarray(probs, dtype=np.float64)
    above = np.nextafter(probs.max(), np.inf)
    return np.unique(np.concatenate([[0.0], probs, [above] if above <= 1 else []]))


def sweep(probs: np.ndarray, keep: np.ndarray, blank: np.ndarray) -> Sweep:
    """Score every candidate threshold of one class in O(n log n).

    At threshold ``t`` a pair scores ``blank`` when its probability is < ``t`` and ``keep``
    otherwise; sorted by probability, the blanked pairs are a prefix, so the mean score at every
    candidate comes from two cumulative sums.

    Args:
        probs: (n,) presence probabilities in [0, 1].
        keep: (n,) score of each pair when kept (e.g. its segmentation Dice).
        blank: (n,) score of each pair when blanked (e.g. 1 if the class is absent, else 0).

    Returns:
        The sweep, best score chosen with ties broken toward the lower threshold.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.size == 0:
        raise CloudpipeError("no pairs to tune a threshold on")
    order = np.argsort(probs, kind="stable")
    sorted_probs = probs[order]
    kept = np.concatenate([[0.0], np.cumsum(np.asarray(keep, np.float64)[order])])
    blanked = np.concatenate([[0.0], np.cumsum(np.asarray(blank, np.float64)[order])])
    thresholds = candidate_thresholds(probs)
    cut = np.searchsorted(sorted_probs, thresholds, side="left")  # pairs blanked at each candidate
    scores = (blanked[cut] + kept[-1] - kept[cut]) / probs.size
    best = int(np.flatnonzero(scores >= scores.max() - TIE_TOLERANCE)[0])
    return Sweep(thresholds, scores, best)


@dataclass(frozen=True)
class PairScores:
    """What each (image, class) pair scores kept or blanked, arrays of shape (n_images, 4)."""

    images: list[str]
    keep: np.ndarray
    blank: np.ndarray
    present: np.ndarray  # bool: the class is in the image (blanking it is a mistake)

    @classmethod
    def dice(cls, truth: pd.DataFrame, pred: pd.DataFrame, truth_shape: tuple[int, int],
             pred_shape: tuple[int, int]) -> PairScores:
        """Kaggle Dice of segmentation predictions kept or blanked (wide RLE frames; the
        images of ``pred``)."""
        stats = pair_stats(truth, pred, truth_shape, pred_shape)
        return cls(stats.images, stats.dice(), stats.blanked_dice(), stats.truth_area > 0)

    @classmethod
    def accuracy(cls, labels: pd.DataFrame) -> PairScores:
        """Accuracy of "present" (kept) or "absent" (blanked) against 0/1 presence labels."""
        present = labels.loc[:, list(CLASSES)].to_numpy() > 0
        return cls(list(labels.index), present.astype(np.float64), (~present).astype(np.float64), present)


def choose_thresholds(probs: np.ndarray, scores: PairScores) -> dict[str, Sweep]:
    """The sweep of every class (class order), from probabilities (n, 4) aligned with
    ``scores.images``."""
    return {c: sweep(probs[:, k], scores.keep[:, k], scores.blank[:, k]) for k, c in enumerate(CLASSES)}


def summary_rows(probs: np.ndarray, scores: PairScores, sweeps: Mapping[str, Sweep], objective: Objective) -> list[dict]:
    """The tuning table: per class and overall, the score with no blanking, at 0.5 and tuned,
    and how many masks the tuned threshold removes, of which wrongly (class present)."""
    metric = METRIC_NAMES[objective]
    rows = []
    for k, (cls, s) in enumerate(sweeps.items()):
        removed = probs[:, k] < s.threshold
        rows.append({
            "class": cls,
            "threshold": s.threshold,
            f"{metric}_no_blank": s.score_at(0.0),
            f"{metric}_at_0.5": s.score_at(0.5),
            f"{metric}_tuned": s.score,
            "removed": int(removed.sum()),
            "wrongly": int((removed & scores.present[:, k]).sum()),
        })
    mean = {"class": "mean", "threshold": ""}
    for key in list(rows[0])[2:]:
        values = [r[key] for r in rows]
        mean[key] = sum(values) if isinstance(values[0], int) else float(np.mean(values))
    return rows + [mean]


# ----------------------------------------------------------------------------- inputs


def read_probs_csv(path: Path) -> pd.DataFrame:
    """Read probabilities ``image,Fish,Flower,Gravel,Sugar`` (e.g. ``val_probs.csv``).

    Returns:
        float64 DataFrame indexed by image, columns in class order.

    Raises:
        CloudpipeError: missing file, wrong columns, no rows, a duplicate image, or a value
            that is not a number in [0, 1] (naming its line).
    """
    text = read_csv_text(path, PROBS_COLUMNS)
    values = text[list(CLASSES)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~((values >= 0) & (values <= 1))  # also NaN: empty or not a number
    if bad.any():
        i, k = np.argwhere(bad)[0]
        raise CloudpipeError(f"{CLASSES[k]} probability {text.iat[i, k + 1]!r} is not a number in [0, 1]",
                             path=path, line=int(i) + 2)
    duplicated = text["image"].duplicated().to_numpy()
    if duplicated.any():
        i = int(np.flatnonzero(duplicated)[0])
        raise CloudpipeError(f"duplicate image {text['image'].iat[i]!r}", path=path, line=i + 2)
    return pd.DataFrame(values, index=pd.Index(text["image"], name="image"), columns=list(CLASSES))


def compute_val_probs(run_dir: Path, data_dir: Path, *, device: str = "auto", batch_size: int = 16,
                      workers: int = 2, progress: bool = True) -> pd.DataFrame:
    """Classifier probabilities of a run's validation images, when its ``val_probs.csv`` is lost.

    The split is rebuilt from ``RUN_DIR/config.yaml`` and ``DIR/train.csv``; with folds, each
    ``fold{i}`` model predicts its own validation images (out-of-fold).

    Returns:
        float DataFrame indexed by image, columns in class order.
    """
    from cloudpipe.infer import predict_presence

    data, folders = validation_parts(run_dir, data_dir, "classifier")
    parts = []
    for folder, val_images in folders:
        probs = predict_presence(folder, data.paths(val_images), device=device, batch_size=batch_size,
                                 workers=workers, progress=progress)
        parts.append(pd.DataFrame(probs, index=pd.Index(val_images, name="image"), columns=list(CLASSES)))
    return pd.concat(parts).astype(np.float64)


def _require_truth(images: list[str], known: pd.Index, what: str) -> None:
    missing = [i for i in images if i not in known]
    if missing:
        raise CloudpipeError(f"{what}: {len(missing)} image(s) have no truth in train.csv "
                             f"(e.g. {', '.join(missing[:3])})")


# ----------------------------------------------------------------------------- the command


@dataclass
class TuneResult:
    """What :func:`tune_thresholds` chose, and why."""

    thresholds: dict[str, float]
    objective: Objective
    images: list[str]
    sweeps: dict[str, Sweep]
    rows: list[dict]
    probs_source: str
    json_path: Path | None = None
    plot_path: Path | None = None

    def to_json(self) -> dict:
        """The ``thresholds.json`` content: class thresholds, objective, number of images."""
        return {**self.thresholds, "objective": self.objective, "images": len(self.images)}

    def summary(self) -> str:
        """Lines to print under the table: what was optimised, on what, and what was written."""
        if self.objective == "dice":
            lines = [f"tuned on Kaggle Dice after blanking, {len(self.images)} validation images "
                     f"(probabilities: {self.probs_source})"]
        else:
            lines = [f"tuned on ACCURACY, {len(self.images)} validation images (probabilities: {self.probs_source})",
                     "warning: accuracy is not the competition metric (mean Dice after blanking); "
                     "pass --seg VAL_SEG.csv to tune on Dice"]
        written = [str(p) for p in (self.json_path, self.plot_path) if p is not None]
        if written:
            lines.append("wrote " + " and ".join(written))
        return "\n".join(lines)


def tune_thresholds(
    run_dir: Path,
    data_dir: Path,
    *,
    seg: Path | None = None,
    objective: Objective | None = None,
    mask_shape: tuple[int, int] = SUBMISSION_SHAPE,
    out: Path | None = None,
    plot: Path | None = None,
    overwrite: bool = False,
    save: bool = True,
    device: str = "auto",
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = True,
) -> TuneResult:
    """Choose each class's presence threshold on the run's validation images.

    Probabilities come from ``RUN_DIR/val_probs.csv`` (out-of-fold with folds), or are computed
    by :func:`compute_val_probs` when it is missing. With ``seg`` (the default objective
    ``"dice"``), each class's threshold maximises the mean Kaggle Dice of the blanked
    predictions over the images with both a probability and a prediction; truth masks come from
    ``DIR/train.csv`` at the training image size. Without it, ``"accuracy"`` of ``prob >= t``
    against the ``train.csv`` labels is maximised, which is not the competition metric.

    Args:
        run_dir: classifier run folder.
        data_dir: Kaggle-layout folder with ``train.csv`` (and ``train_images/``).
        seg: segmentation predictions (Kaggle CSV) covering some validation images.
        objective: ``"dice"`` (needs ``seg``) or ``"accuracy"``; default from ``seg``.
        mask_shape: (H, W) of the masks in ``seg``.
        out: JSON to write; default ``RUN_DIR/thresholds.json``, which is replaced when it
            exists (the run's own tuning, read by ``predict``). A given path is not replaced
            without ``overwrite``.
        plot: PNG of score against threshold; default ``out`` with suffix ``.png``.
        overwrite: replace existing ``out`` / ``plot`` files given explicitly.
        save: write the JSON and the plot (False: only return the result).
        device, batch_size, workers, progress: inference settings when probabilities must be
            computed.

    Returns:
        The thresholds, per-class sweeps and the summary table.

    Raises:
        CloudpipeError: missing run files, malformed CSVs, predictions sharing no image with the
            validation probabilities, images without truth, or outputs that may not be written.
    """

    run_dir, data_dir = require_dir(run_dir), require_dir(data_dir)
    objective = objective or ("dice" if seg is not None else "accuracy")
    if objective not in METRIC_NAMES:
        raise CloudpipeError(f"objective must be one of {', '.join(METRIC_NAMES)}, got {objective!r}")
    if objective == "dice" and seg is None:
        raise CloudpipeError("the dice objective needs segmentation predictions (--seg VAL_SEG.csv)")
    probs_csv = run_dir / VAL_PROBS_CSV
    json_path = Path(out) if out is not None else run_dir / THRESHOLDS_JSON
    plot_path = Path(plot) if plot is not None else json_path.with_suffix(".png")
    if save:
        if json_path.resolve() == plot_path.resolve():
            raise CloudpipeError("--plot must differ from --out", path=plot_path)
        inputs = [p for p in (seg, probs_csv, data_dir / TRAIN_CSV) if p is not None]
        check_output(json_path, overwrite=overwrite or out is None, inputs=inputs)
        check_output(plot_path, overwrite=overwrite or (out is None and plot is None), inputs=inputs)

    train = read_train(data_dir)
    labels = presence(train)
    if probs_csv.exists():
        probs, source = read_probs_csv(probs_csv), str(probs_csv)
    else:
        probs = compute_val_probs(run_dir, data_dir, device=device, batch_size=batch_size, workers=workers,
                                  progress=progress)
        source = f"computed by the run's model(s), no {VAL_PROBS_CSV}"
    _require_truth(list(probs.index), labels.index, source)

    if seg is None:
        scores = PairScores.accuracy(labels.loc[probs.index])
    else:
        pred = to_wide(read_mask_csv(seg, shape=mask_shape))
        _require_truth(list(pred.index), labels.index, str(seg))
        pred = pred.loc[pred.index.isin(probs.index)]
        if pred.empty:
            raise CloudpipeError(f"shares no image with the validation probabilities ({source}, "
                                 f"{len(probs)} images)", path=seg)
        if objective == "dice":
            truth_shape = check_images(data_dir / TRAIN_IMAGES / i for i in pred.index)
            validate_rle_column(train, truth_shape, data_dir / TRAIN_CSV)
            scores = PairScores.dice(to_wide(train), pred, truth_shape, mask_shape)
        else:
            scores = PairScores.accuracy(labels.loc[pred.index])
    p = probs.loc[scores.images].to_numpy()
    sweeps = choose_thresholds(p, scores)
    result = TuneResult({c: s.threshold for c, s in sweeps.items()}, objective, scores.images, sweeps,
                        summary_rows(p, scores, sweeps, objective), source)
    if save:
        from cloudpipe.plots import plot_threshold_curves

        write_text(json.dumps(result.to_json(), indent=2) + "\n", json_path)
        plot_threshold_curves(sweeps, plot_path, metric="Dice" if objective == "dice" else "accuracy",
                              images=len(scores.images))
        result.json_path, result.plot_path = json_path, plot_path
    return result
