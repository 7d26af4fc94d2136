"""``cloudpipe report``: how good the pipeline is, stage by stage, in one self-contained page.

Scores one set of segmentation masks several ways (all empty, alone, gated, gated by the true
presence), says where the Dice is won and lost, and shows the worst and best images as
overlays, in one HTML file with its pictures embedded: no network, no JavaScript.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cloudpipe.algorithms.breakdown import DECISIONS, binned_mean, decisions, gated_dice, headline, rank_images
from cloudpipe.algorithms.gating import GateSpec, keep
from cloudpipe.algorithms.presence import CLASSIFIER
from cloudpipe.algorithms.thresholds import PairScores, choose_thresholds
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.masks import decode_masks
from cloudpipe.core.metric import PairStats, pair_stats
from cloudpipe.core.profile import active
from cloudpipe.data.beside import probs_path_for
from cloudpipe.data.images import jpeg_size, read_image, reduction_for
from cloudpipe.data.kaggle import TRAIN_CSV, data_inputs, find_image, read_probs_csv, require_dir, require_images
from cloudpipe.data.outputs import Inputs
from cloudpipe.data.runfolder import VAL_PROBS_CSV, run_inputs
from cloudpipe.pipeline.evaluate import default_truth_shape, read_truth_and_prediction
from cloudpipe.pipeline.gate import resolve_gate

AREA_EDGES = (1, 2_500, 5_000, 10_000, 20_000, 40_000, 80_000)
"""Mask areas (pixels) the report's Dice-by-area bins start at; the last bin ends at the whole mask."""
PROB_EDGES = tuple(np.round(np.linspace(0, 1, 11), 2))
"""Bins of presence probability for Dice against probability."""

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """A segmentation submission scored against the truth, with its presence probabilities."""

    stats: PairStats
    truth: pd.DataFrame  # wide RLE frames (image rows, class columns) and their mask sizes
    pred: pd.DataFrame
    truth_shape: tuple[int, int]
    mask_shape: tuple[int, int]
    probs: np.ndarray | None = None
    gate: GateSpec | None = None
    """The tuned gate applied to ``probs`` (its thresholds and at-least-one rule)."""
    thresholds_source: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    in_sample: bool = False
    """The gate was tuned on these very images (its row says so)."""

    def headline(self) -> list[dict]:
        """See :func:`cloudpipe.algorithms.breakdown.headline`."""
        return headline(self.stats, self.probs, self.gate, in_sample=self.in_sample)

    def best_gate(self) -> np.ndarray:
        """Which pairs the best gate given keeps (tuned, with its at-least-one rule, else 0.5,
        else all)."""
        if self.probs is None:
            return np.ones_like(self.stats.truth_area, dtype=bool)
        if self.gate is None:
            return keep(self.probs, 0.5)
        return self.gate.keep(self.probs, self.stats.pred_area > 0)


def score_submission(data_dir: Path, seg_csv: Path, *, run_dir: Path | None = None, probs_csv: Path | None = None,
                     thresholds_file: Path | float | None = None, truth_csv: Path | None = None,
                     truth_shape: tuple[int, int] | None = None, mask_shape: tuple[int, int] | None = None,
                     progress: bool = True) -> Scored:
    """Pair statistics of ``seg_csv`` (masks at ``mask_shape``, scored on its images) against
    the truth, and the probabilities and thresholds of the gate.

    Args:
        run_dir: classifier run: ``val_probs.csv`` and ``thresholds.json`` (validation images).
        probs_csv: presence probabilities (``predict``'s ``<stem>_probs.csv``), over the run's.
        thresholds_file: the tuned gate's thresholds (a file, or one threshold for every
            class); default the run's ``thresholds.json``; without either, thresholds are
            tuned on these very images (in-sample, said so).
        truth_csv, truth_shape: truth masks and their size; default ``DATA/train.csv``
            (:func:`~cloudpipe.pipeline.evaluate.default_truth_shape`).

    Raises:
        CloudpipeError: bad or missing files, or truth or probabilities lacking its images.
    """
    mask_shape = mask_shape or active().submission_size
    data_dir = require_dir(data_dir)
    truth_csv = Path(truth_csv) if truth_csv is not None else data_dir / TRAIN_CSV
    sources = {"segmentation": str(seg_csv), "truth": str(truth_csv)}
    if probs_path_for(seg_csv).is_file():  # predict writes <stem>_probs.csv beside every submission it gates
        gated = f"looks gated (predict wrote {probs_path_for(seg_csv).name} beside it), so 'segmentation alone' is already gated"
        log.warning(f"warning: {seg_csv} {gated}: pass predict-seg's masks (RUN/test_seg.csv) as --seg")
        sources["segmentation"] += f" ({gated})"
    if truth_shape is None:
        truth_shape = default_truth_shape(truth_csv)
    truth, pred = read_truth_and_prediction(truth_csv, Path(seg_csv), truth_shape, mask_shape)
    images = list(pred.index)
    parts = [pair_stats(truth, pred.iloc[start:start + 64], truth_shape, mask_shape)
             for start in tqdm(range(0, len(images), 64), desc="scoring", unit="chunk", disable=not progress, leave=False)]
    stats = PairStats(images, *(np.concatenate([getattr(p, a) for p in parts]) for a in ("intersection", "pred_area", "truth_area")))
    scored = Scored(stats, truth, pred, truth_shape, mask_shape, sources=sources)
    probs_path = Path(probs_csv) if probs_csv is not None else (Path(run_dir) / VAL_PROBS_CSV if run_dir is not None else None)
    if probs_path is None:
        if thresholds_file is not None:
            raise CloudpipeError("--thresholds needs presence probabilities (--probs PROBS.csv or --run RUN)")
        return scored
    probs = read_probs_csv(probs_path)
    require_images(images, probs.index, of=str(seg_csv), path=probs_path)
    scored.probs = probs.loc[images].to_numpy()
    sources["probabilities"] = str(probs_path)
    # tuned for the run whose probabilities are scored, as predict checks
    spec, scored.thresholds_source = resolve_gate(run_dir, thresholds_file)
    if spec is not None:
        if probs_csv is None and spec.sources != [CLASSIFIER]:
            raise CloudpipeError(f"gates on {', '.join(spec.sources)}, not on the classifier's val_probs.csv alone: pass "
                                 "--probs with the scores gated on (predict's <stem>_probs.csv)", path=thresholds_file)
        if spec.at_least_one:
            scored.thresholds_source += ", with its at-least-one-class rule"
    else:
        sweeps = choose_thresholds(scored.probs, PairScores.of_stats(stats))
        spec = GateSpec({c: s.threshold for c, s in sweeps.items()})
        scored.thresholds_source = "tuned on these images (in-sample: an upper bound)"
        scored.in_sample = True
    scored.gate = spec
    sources["thresholds"] = scored.thresholds_source
    return scored


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    path: Path
    scored: Scored
    headline: list[dict]
    seconds: float


def write_report(data_dir: Path, seg_csv: Path, out: Path, *, overwrite: bool = False, overlays: int = 6,
                 progress: bool = True, **inputs) -> Report:
    """Score ``seg_csv`` (:func:`score_submission`, which takes ``inputs``) and write the report
    page to ``out``, ``overlays`` worst images drawn (and half as many of the best)."""
    started = time.perf_counter()
    reads = data_inputs(data_dir) | run_inputs([inputs["run_dir"]] if inputs.get("run_dir") else []) | Inputs.of(
        seg_csv, inputs.get("probs_csv"), inputs.get("truth_csv"),
        *[t for t in [inputs.get("thresholds_file")] if isinstance(t, (str, Path))])
    from cloudpipe.engine.runner import Plan, Runner

    with Runner.start() as run:
        run.claim(lambda: (Plan(reads, [out], overwrite=overwrite), None))
        scored = score_submission(data_dir, seg_csv, progress=progress, **inputs)
        page = render_page(scored, Path(data_dir), Path(seg_csv).name, overlays, progress)
        run.write({out: lambda tmp: tmp.write_text(page)})
    return Report(out, scored, scored.headline(), time.perf_counter() - started)


# ----------------------------------------------------------------------------- the page


@dataclass(frozen=True)
class Picture:
    """A figure drawn for the page: its bytes go inside the ``<img>`` (a data URI)."""

    alt: str
    data: str
    format: str = "png"

    @classmethod
    def of(cls, fig, alt: str, format: str = "png") -> Picture:
        from cloudpipe.plots import image_bytes

        return cls(alt, base64.b64encode(image_bytes(fig, format)).decode(), format)


def _cell(value) -> str:
    """A table cell: floats with 4 decimals, NaN (a figure that does not exist) as a dash."""
    if isinstance(value, float):
        return "—" if np.isnan(value) else f"{value:.4f}"
    return str(value)


def _decision_rows(scored: Scored) -> list[dict]:
    table = decisions(scored.stats, scored.best_gate())
    return [{"class": c, **{f"{d}: pairs": int(table.counts[k, j]) for j, d in enumerate(DECISIONS)},
             "Dice gained by blanking absent": float(table.effect[k, 3]),
             "Dice lost by blanking present": float(table.effect[k, 2]), "net": float(table.effect[k].sum())}
            for k, c in enumerate(active().classes)]


def _area_figure(scored: Scored):
    from cloudpipe.plots import lines_figure

    stats, present = scored.stats, scored.stats.truth_area > 0
    (h, w) = active().submission_size
    whole = h * w
    edges = (*(e for e in AREA_EDGES if e < whole), whole)
    labels = [f"{edges[i]:,}-{edges[i + 1]:,}" for i in range(len(edges) - 1)]
    series, counts = _per_class(stats.dice(), stats.truth_area.astype(float), edges, present)
    return lines_figure(labels, series, title="Segmentation Dice against true mask area (present pairs)",
                        xlabel=f"true mask area, pixels at {h} x {w}", ylabel="mean Dice (kept)", counts=counts)


def _per_class(values: np.ndarray, by: np.ndarray, edges: tuple, where: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Each class's binned mean of ``values`` over bins of ``by`` (pairs ``where`` is true), and
    the pairs in each bin over all classes."""
    series, counts = {}, np.zeros(len(edges) - 1, int)
    for k, c in enumerate(active().classes):
        rows = slice(None) if where is None else where[:, k]
        series[c], count = binned_mean(values[rows, k], by[rows, k], edges)
        counts += count
    return series, counts


def _probability_figures(scored: Scored) -> list:
    """Two figures over presence-probability bins, per class: the mean Dice of the kept masks,
    and the share of pairs whose class is present (the classifier's calibration)."""
    from cloudpipe.plots import lines_figure

    labels = [f"{PROB_EDGES[i]:.1f}-{PROB_EDGES[i + 1]:.1f}" for i in range(len(PROB_EDGES) - 1)]
    present = (scored.stats.truth_area > 0).astype(float)
    figures = []
    for values, title, ylabel in ((scored.stats.dice(), "Segmentation Dice against presence probability", "mean Dice (kept)"),
                                  (present, "Share of pairs present against presence probability (calibration)",
                                   "share present")):
        series, counts = _per_class(values, scored.probs, PROB_EDGES)
        figures.append(lines_figure(labels, series, title=title, xlabel="presence probability", ylabel=ylabel, counts=counts))
    return figures


def _overlay(scored: Scored, data_dir: Path, image: str, dice: np.ndarray) -> Picture:
    from cloudpipe.plots import overlay_figure

    path = find_image(data_dir, image)
    source = jpeg_size(path)
    pixels = read_image(path, active().submission_size, reduction_for(source, active().submission_size))
    truth = decode_masks(scored.truth.loc[image, list(active().classes)], scored.truth_shape, active().submission_size)
    pred = decode_masks(scored.pred.loc[image, list(active().classes)], scored.mask_shape, active().submission_size)
    kept = scored.best_gate()[scored.stats.images.index(image)]
    pred = pred * kept[:, None, None]  # as submitted: blanked classes drawn empty
    return Picture.of(overlay_figure(pixels, truth=truth, pred=pred, title=f"{image}: mean Dice {dice.mean():.2f}", width=9,
                                     dice=dice), f"overlay of {image}", "jpeg")


def render_page(scored: Scored, data_dir: Path, title: str, overlays: int, progress: bool) -> str:
    """The report as one HTML document (``templates/report.html``; pictures embedded as data URIs)."""
    import jinja2
    from markupsafe import Markup

    from cloudpipe.plots import threshold_figure

    stats = scored.stats
    page = {"title": title, "images": len(stats.images), "pairs": len(stats.images) * len(active().classes), "classes": active().classes,
            "headline": scored.headline(), "gated": scored.probs is not None,
            "by_area": Picture.of(_area_figure(scored), "Dice against mask area"),
            "inputs": [{"input": k, "file": v} for k, v in scored.sources.items()]}
    if scored.probs is not None:
        sweeps = choose_thresholds(scored.probs, PairScores.of_stats(stats))
        page |= {"gate_name": "tuned thresholds" if scored.gate is not None else "0.5", "decisions": _decision_rows(scored),
                 "curves": Picture.of(threshold_figure(sweeps, images=len(stats.images), which="scored",
                                                       applied=scored.gate.thresholds), "Dice against threshold per class"),
                 "thresholds": ", ".join(f"{c} {t:.3f}" for c, t in scored.gate.thresholds.items()),
                 "thresholds_source": scored.thresholds_source,
                 "by_probability": [Picture.of(fig, "against presence probability") for fig in _probability_figures(scored)]}
    dice = gated_dice(stats, scored.best_gate())
    worst, best = rank_images(dice, stats.images, overlays)
    page["ranked"] = [(name, [_overlay(scored, data_dir, image, dice[stats.images.index(image)])
                              for image in tqdm(chosen, desc=name.lower(), unit="image", disable=not progress, leave=False)])
                      for name, chosen in (("Worst images", worst), ("Best images", best[: max(1, overlays // 2)]))]
    env = jinja2.Environment(loader=jinja2.PackageLoader("cloudpipe", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["cell"] = _cell
    env.globals["figure"] = lambda p: Markup('<img alt="{}" src="data:image/{};base64,{}">').format(p.alt, p.format, p.data)
    return env.get_template("report.html").render(**page)
