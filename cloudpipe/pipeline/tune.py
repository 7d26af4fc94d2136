"""``tune-threshold``: per-class presence thresholds chosen on the run's validation images
(:mod:`cloudpipe.algorithms.thresholds` searches), written as ``thresholds.json`` and its plot.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cloudpipe.algorithms.ensemble import mean_probs
from cloudpipe.algorithms.gating import GateSpec, keep
from cloudpipe.algorithms.presence import GateChoice, blend, choose_gates, gate_name
from cloudpipe.algorithms.robust import check_rule
from cloudpipe.algorithms.thresholds import METRIC_NAMES, Objective, PairScores, Placement, Sweep, summary_rows
from cloudpipe.core.choices import DEFAULT_RULE, Rule
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.profile import active
from cloudpipe.data.images import check_images
from cloudpipe.data.kaggle import (
    TRAIN_CSV,
    TRAIN_IMAGES,
    data_inputs,
    presence,
    read_mask_csv,
    read_probs_csv,
    read_train,
    require_dir,
    require_images,
    to_wide,
    validate_rle_column,
)
from cloudpipe.data.outputs import Inputs
from cloudpipe.data.runfolder import THRESHOLDS_JSON, THRESHOLDS_PNG, VAL_PROBS_CSV, run_inputs, trained_checkpoints
from cloudpipe.engine.settings import InferenceSettings
from cloudpipe.pipeline.ensemble import Ensemble, require_same_validation
from cloudpipe.pipeline.gate import SEGMENTATION_KEY, GateInputs
from cloudpipe.pipeline.sources import registry
from cloudpipe.pipeline.validation import validation_sets

SEG_WANTS_VAL = "--seg wants validation masks: predict-seg --split val's CSV (RUN/val_seg.csv), not test masks"


def compute_val_probs(run_dir: Path, data_dir: Path, settings: InferenceSettings = InferenceSettings()) -> pd.DataFrame:
    """Classifier probabilities (indexed by image, class columns) of the validation images
    ``RUN/splits.csv`` recorded, when its ``val_probs.csv`` is lost; out-of-fold with folds. A
    fold without a model is refused, or with ``settings.allow_partial`` left out (warned).
    """
    from cloudpipe.engine.infer import predict_presence

    data, splits = validation_sets(run_dir, data_dir, "classifier")
    trained = {path.parent for path in trained_checkpoints(run_dir, settings.allow_partial)}
    parts = []
    for split in splits:
        if split.folder not in trained:
            continue  # allow_partial: a fold without a model (trained_checkpoints warned)
        probs = predict_presence(split.folder, data.paths(split.val), settings)
        parts.append(pd.DataFrame(probs, index=pd.Index(split.val, name="image"), columns=list(active().classes)))
    return pd.concat(parts).astype(np.float64)


@dataclass
class TuneResult:
    """What :func:`tune_thresholds` chose, and why."""

    thresholds: dict[str, float]
    objective: Objective
    images: list[str]
    sweeps: dict[str, Sweep]
    rows: list[dict]
    probs_source: str
    ensemble: Ensemble
    spec: GateSpec
    chosen: GateChoice
    """The gate chosen per class, and the tuned score of every candidate."""
    placement: Placement = "exact"
    rule: Rule = DEFAULT_RULE
    """How the thresholds and sources were chosen (:mod:`cloudpipe.algorithms.robust`)."""
    rule_scores: tuple[float, float] | None = None
    """Mean score without and with the at-least-one rule, when it was tried."""
    json_path: Path | None = None
    plot_path: Path | None = None
    segmentation: Ensemble | None = None
    """The segmentation runs of the store tuned on (``--seg-store``)."""
    validation_images: int = 0
    """How many validation images the classifier's probabilities cover (``images`` may be fewer:
    the segmentation predictions' share of them)."""

    @property
    def source_rows(self) -> list[dict]:
        """Each candidate source or blend: its tuned score per class and mean."""
        return self.chosen.rows()

    def to_json(self) -> dict:
        """The ``thresholds.json`` content: the gate, how and on what it was tuned."""
        segmentation = {} if self.segmentation is None else {SEGMENTATION_KEY: self.segmentation.record()}
        return {**self.spec.to_json(), "objective": self.objective, "placement": self.placement, "choice": self.rule,
                "images": len(self.images), **self.ensemble.record(), **segmentation}

    def summary(self) -> str:
        """Lines to print under the table: what was optimised, on what, and what was written."""
        if self.objective == "dice":
            lines = [f"tuned on Kaggle Dice after blanking, {len(self.images)} validation images, {self.rule} choice "
                     f"(probabilities: {self.probs_source})"]
            if self.validation_images > len(self.images):
                lines.append(f"note: --seg covers {len(self.images)} of the classifier's {self.validation_images} validation "
                             "images; tuned on those alone")
        else:
            lines = [f"tuned on ACCURACY, {len(self.images)} validation images (probabilities: {self.probs_source})",
                     "warning: accuracy is not the competition metric (mean Dice after blanking); "
                     "pass --seg VAL_SEG.csv to tune on Dice"]
        lines.append("gated on: " + ", ".join(f"{c} {gate_name(g)}" for c, g in self.spec.gates.items()))
        lines += [f"{c}: {s.kept.reason()}" for c, s in self.sweeps.items() if s.kept is not None and s.kept.costs]
        lines += [f"{c}: {kept.reason()}" for c, kept in self.chosen.kept.items()]
        if self.rule_scores is not None:
            without, with_rule = self.rule_scores
            lines.append(f"at least one class per image: {with_rule:.4f} with the rule, {without:.4f} without -> "
                         + ("kept" if self.spec.at_least_one else "not kept (it does not help here)"))
        written = [str(p) for p in (self.json_path, self.plot_path) if p is not None]
        if written:
            lines.append("wrote " + " and ".join(written))
        return "\n".join(lines)


@dataclass(frozen=True)
class ThresholdFiles:
    """Where :func:`tune_thresholds` writes: the JSON (default ``RUN_DIR/thresholds.json``,
    replaced when it exists: the run's own tuning), the plot (default ``out`` with ``.png``),
    and whether files given explicitly may be replaced."""

    out: Path | None = None
    plot: Path | None = None
    overwrite: bool = False


def tune_thresholds(run_dir: Path | Sequence[Path], data_dir: Path, *, weights: Sequence[float] | None = None,
                    seg: Path | None = None, objective: Objective | None = None,
                    mask_shape: tuple[int, int] | None = None, files: ThresholdFiles | None = ThresholdFiles(),
                    settings: InferenceSettings = InferenceSettings(), inputs: GateInputs = GateInputs(),
                    choice: Rule = DEFAULT_RULE) -> TuneResult:
    """Choose each class's presence threshold on the run's validation images.

    Probabilities come from ``RUN_DIR/val_probs.csv``, else :func:`compute_val_probs`; several
    runs (which must validate on the same images, the JSON given as ``out``) are averaged with
    ``weights``. With ``seg`` (the default objective ``"dice"``), each threshold maximises the
    mean Kaggle Dice of the blanked predictions against ``train.csv`` at the training image
    size; without it, the ``"accuracy"`` of ``prob >= t`` (not the competition metric).

    Args:
        seg: segmentation predictions (masks at ``mask_shape``) of validation images (some or
            all of them; an image the classifier trained on is refused).
        files: where the JSON and the plot go; None writes nothing.
        inputs: the other sources' validation inputs and how they are searched: each class
            gates on the best source or blend; the at-least-one-class rule is kept only when it
            raises the validation score.

    Raises:
        CloudpipeError: missing run files, malformed CSVs, predictions sharing no image with the
            validation probabilities, images without truth, or outputs that may not be written.
    """
    mask_shape = mask_shape or active().submission_size
    from cloudpipe.engine.runner import Plan, Runner

    def declare() -> tuple[Plan, tuple[Ensemble, Path, Objective, Path | None, Path | None]]:
        ensemble = Ensemble.of(run_dir, weights)
        for run in ensemble.runs:
            require_dir(run)
        data = require_dir(data_dir)
        if files is not None and files.out is None and not ensemble.single:
            raise CloudpipeError("an ensemble's thresholds need --out FILE (a run's own thresholds.json is for that run alone)")
        goal = objective or ("dice" if seg is not None else "accuracy")
        if goal not in METRIC_NAMES:
            raise CloudpipeError(f"objective must be one of {', '.join(METRIC_NAMES)}, got {goal!r}")
        if goal == "dice" and seg is None:
            raise CloudpipeError("the dice objective needs segmentation predictions (--seg VAL_SEG.csv)")
        if files is None:
            return Plan(), (ensemble, data, goal, None, None)
        out, plot = files.out, files.plot
        json_path = Path(out) if out is not None else ensemble.runs[0] / THRESHOLDS_JSON
        plot_path = Path(plot) if plot is not None else json_path.with_suffix(".png")
        if json_path.resolve() == plot_path.resolve():
            raise CloudpipeError("--plot must differ from --out", path=plot_path)
        own = [ensemble.runs[0] / THRESHOLDS_JSON, ensemble.runs[0] / THRESHOLDS_PNG]
        reads = data_inputs(data) | run_inputs(ensemble.runs, writes=own if ensemble.single else []) | \
            Inputs.of(seg) | inputs.reads()
        defaulted = [json_path] if out is None else []  # the run's own files, re-tuned
        defaulted += [plot_path] if out is None and plot is None else []
        writes = [p for p in (json_path, plot_path) if p not in defaulted]
        return Plan(reads, writes, replaces=defaulted, overwrite=files.overwrite), (ensemble, data, goal, json_path, plot_path)

    with Runner.start() as run:
        ensemble, data_dir, objective, json_path, plot_path = run.claim(declare)
        result = _tune(ensemble, data_dir, seg, objective, mask_shape, settings, inputs, check_rule(choice))
        result.segmentation = inputs.segmentation()
        if files is not None:
            from cloudpipe.plots import figure_writer, threshold_figure

            figure = threshold_figure(result.sweeps, metric="Dice" if objective == "dice" else "accuracy",
                                      images=len(result.images))
            run.write({json_path: lambda tmp: tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n"),
                       plot_path: figure_writer(figure)})
            result.json_path, result.plot_path = json_path, plot_path
    return result


def ensemble_val_probs(ensemble: Ensemble, data_dir: Path, settings: InferenceSettings) -> tuple[pd.DataFrame, str]:
    """The weighted mean of the runs' validation probabilities (each from ``RUN/val_probs.csv``,
    else computed), rows in the first run's order, and where they came from; runs whose
    validation images differ are refused."""
    parts, sources = [], []
    for run in ensemble.runs:
        probs_csv = run / VAL_PROBS_CSV
        if probs_csv.exists():
            parts.append(read_probs_csv(probs_csv))
            sources.append(str(probs_csv))
        else:
            parts.append(compute_val_probs(run, data_dir, settings))
            sources.append(f"computed by {run}'s model(s), no {VAL_PROBS_CSV}")
    require_same_validation(list(ensemble.runs), [list(p.index) for p in parts])
    if ensemble.single:
        return parts[0], sources[0]
    index = parts[0].index
    mean = mean_probs([p.loc[index].to_numpy() for p in parts], ensemble.weights)
    weights = ", ".join(f"{w:.3g}" for w in ensemble.weights)
    return pd.DataFrame(mean, index=index, columns=parts[0].columns), f"weighted mean ({weights}) of " + "; ".join(sources)


def _tune(ensemble: Ensemble, data_dir: Path, seg: Path | None, objective: Objective, mask_shape: tuple[int, int],
          settings: InferenceSettings, inputs: GateInputs, rule: Rule) -> TuneResult:
    """The work of :func:`tune_thresholds` between checking its outputs and writing them."""
    train = read_train(data_dir)
    labels = presence(train)
    probs, source = ensemble_val_probs(ensemble, data_dir, settings)
    require_images(probs.index, labels.index, TRAIN_CSV, source)

    if seg is None:
        scores = PairScores.accuracy(labels.loc[probs.index])
    else:
        pred = to_wide(read_mask_csv(seg, shape=mask_shape))
        require_images(pred.index, labels.index, TRAIN_CSV, str(seg), hint=f"; {SEG_WANTS_VAL}")
        inside = pred.index.isin(probs.index)
        if not inside.any():
            raise CloudpipeError(f"shares no image with the validation probabilities ({source}, "
                                 f"{len(probs)} images): give predict-seg --split val's CSV (RUN/val_seg.csv) of a "
                                 "segmentation run trained on the classifier's split (the same --val-fraction, or --folds, "
                                 "and split_seed)", path=seg)
        if not inside.all():
            outside = list(pred.index[~inside])
            raise CloudpipeError(f"only {int(inside.sum())} of its {len(pred)} images are validation images of the "
                                 f"classifier ({source}); the others (e.g. {', '.join(outside[:3])}) it trained on: "
                                 "give predictions of its validation images (both stages trained on the same split: "
                                 "the same --val-fraction, or --folds, and split_seed)",
                                 path=seg)
        if objective == "dice":
            truth_shape = check_images(data_dir / TRAIN_IMAGES / i for i in pred.index)
            validate_rle_column(train, truth_shape, data_dir / TRAIN_CSV)
            scores = PairScores.dice(to_wide(train), pred, truth_shape, mask_shape)
        else:
            scores = PairScores.accuracy(labels.loc[pred.index])
    names = inputs.names()
    found = inputs.scores(scores.images, names, "val", classifier=probs)
    chosen = choose_gates(found, scores, names, inputs.placement, rule)
    p = blend(found, chosen.gates)
    thresholds = {c: s.threshold for c, s in chosen.sweeps.items()}
    pixel = inputs.pixel if any(registry()[s].pixel for g in chosen.gates.values() for s in g) else None
    spec, rule_scores = GateSpec(thresholds, chosen.gates, False, pixel), None
    if inputs.try_at_least_one:
        drawn = scores.drawn if scores.drawn is not None else np.ones(p.shape, bool)
        rule_scores = (scores.mean(~keep(p, thresholds)), scores.mean(~keep(p, thresholds, drawn)))
        spec = GateSpec(thresholds, chosen.gates, rule_scores[1] > rule_scores[0], pixel)
    return TuneResult(thresholds, objective, scores.images, chosen.sweeps, summary_rows(p, scores, chosen.sweeps, objective),
                      source, ensemble, spec, chosen, inputs.placement, rule, rule_scores, validation_images=len(probs))
