"""Presence scores from every source, and their blends, for gating.

A *source* gives every (image, class) pair a score in [0, 1]: the separate classifier
(``classifier``), the segmentation model's classification head, statistics of the segmentation
probabilities (:class:`PixelStats`), ... (registered in :mod:`cloudpipe.pipeline.sources`; here
they are arrays by name). A *gate* is,
per class, a weighted blend of sources (``{"classifier": 0.75, "top_mean": 0.25}``);
:func:`choose_gates` tunes the source and blend weight of every class on Dice after blanking,
each class on its own (classes are independent, so the choice is exact on what it searched).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cloudpipe.algorithms.robust import DefaultKept, Rule, best_index, check_held_out
from cloudpipe.algorithms.thresholds import PairScores, Placement, Sweep, choose_thresholds, plateau_threshold
from cloudpipe.core.choices import AREA_THRESHOLD, TOP_K
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.profile import active

CLASSIFIER = "classifier"
"""The separate presence classifier's source: the default gate, and the one blended with others."""
BLEND_WEIGHTS: tuple[float, ...] = (0.25, 0.5, 0.75)
"""The classifier's weights tried in its blend with each other source (the other gets the rest)."""

Gate = dict[str, float]
"""One class's gate: source -> weight, weights summing to 1."""


@dataclass(frozen=True)
class PixelStats:
    """How the pixel statistics are computed: ``top_mean`` averages the ``top_k`` largest pixels
    (at the store's size, 350 x 525; all pixels when larger than the image); ``area`` counts
    the pixels of probability >= ``area_threshold``."""

    top_k: int = TOP_K
    area_threshold: float = AREA_THRESHOLD

    def __post_init__(self):
        if self.top_k < 1:
            raise CloudpipeError(f"top_k {self.top_k} must be >= 1")
        if not 0 <= self.area_threshold <= 1:
            raise CloudpipeError(f"area threshold {self.area_threshold} is not in [0, 1]")

    def scores(self, store: np.ndarray, chunk: int = 32) -> dict[str, np.ndarray]:
        """Every pixel statistic of uint8 probabilities (n, 4, H, W), each (n, 4) in [0, 1],
        from one pass over the store (chunk by chunk: a memory map stays unread elsewhere)."""
        n, k = store.shape[:2]
        pixels = int(np.prod(store.shape[2:]))
        hist = np.empty((n, k, 256), np.int64)
        for start in range(0, n, chunk):
            part = np.asarray(store[start:start + chunk]).reshape(-1, pixels)
            offsets = (np.arange(len(part)) * 256)[:, None]
            hist[start:start + chunk] = np.bincount((part + offsets).ravel(), minlength=256 * len(part)).reshape(-1, k, 256)
        values = np.arange(256, dtype=np.float64)
        top = np.where(hist.any(-1), 255 - np.argmax(hist[..., ::-1] > 0, axis=-1), 0)
        # The top_k largest values: take each value's count from the top down until k are taken.
        k_eff = min(self.top_k, pixels)
        from_top = np.cumsum(hist[..., ::-1], axis=-1)
        taken = np.minimum(hist[..., ::-1], np.maximum(k_eff - (from_top - hist[..., ::-1]), 0))
        top_mean = (taken * values[::-1]).sum(-1) / k_eff
        above = hist[..., round(self.area_threshold * 255):].sum(-1)
        return {"max": top / 255.0, "top_mean": top_mean / 255.0, "area": above / pixels}


def blend(scores: Mapping[str, np.ndarray], gates: Mapping[str, Gate]) -> np.ndarray:
    """The gate score of every pair (n, 4): per class, the weighted sum of its sources' scores
    (each in [0, 1]), in [0, 1]; a source missing from ``scores`` is a CloudpipeError."""
    missing = sorted({s for g in gates.values() for s in g} - set(scores))
    if missing:
        raise CloudpipeError(f"no {', '.join(missing)} scores to gate on")
    n = len(next(iter(scores.values())))
    out = np.zeros((n, len(active().classes)))
    for k, c in enumerate(active().classes):
        for source, weight in gates[c].items():
            out[:, k] += weight * scores[source][:, k]
    return np.clip(out, 0, 1, out=out)  # weights summing to 1 within 1e-6 may overshoot a source's [0, 1] as much


def gate_name(gate: Gate) -> str:
    """``classifier`` or ``0.75 classifier + 0.25 top_mean``."""
    if len(gate) == 1:
        return next(iter(gate))
    return " + ".join(f"{w:g} {s}" for s, w in gate.items())


def candidate_gates(sources: Sequence[str]) -> list[Gate]:
    """Every source alone, then the classifier blended with each other source at
    :data:`BLEND_WEIGHTS` (when the classifier is among ``sources``)."""
    gates = [{s: 1.0} for s in sources]
    if CLASSIFIER in sources:
        gates += [{CLASSIFIER: w, s: 1.0 - w} for s in sources if s != CLASSIFIER for w in BLEND_WEIGHTS]
    return gates


@dataclass(frozen=True)
class GateChoice:
    """What :func:`choose_gates` chose: per class the gate and its sweep, and the tuned score
    of every candidate gate per class (``table``: gate name -> (4,))."""

    gates: dict[str, Gate]
    sweeps: dict[str, Sweep]
    table: dict[str, np.ndarray]
    kept: dict[str, DefaultKept] = field(default_factory=dict)
    """Per class, why ``robust`` kept the first candidate over a better-scoring one."""

    def rows(self) -> list[dict]:
        """The table of sources: tuned score per class and mean, the chosen ones marked."""
        rows = []
        for name, per_class in self.table.items():
            chosen = [c for c in active().classes if gate_name(self.gates[c]) == name]
            rows.append({"source": name, **{c: float(v) for c, v in zip(active().classes, per_class)},
                         "mean": float(per_class.mean()), "chosen for": ", ".join(chosen) or "-"})
        return rows


def choose_gates(scores: Mapping[str, np.ndarray], pairs: PairScores, sources: Sequence[str] | None = None,
                 placement: Placement = "exact", rule: Rule = "best") -> GateChoice:
    """Per class, the candidate gate (:func:`candidate_gates`) whose tuned threshold scores best;
    ties go to the first candidate (the first source alone). With ``rule`` ``robust`` each
    gate's threshold is chosen robustly too, and a class keeps the first candidate unless the
    best one beats it on held-out images, both gates' thresholds tuned again on the rest
    (:func:`~cloudpipe.algorithms.robust.holds_up`). ``scores``: source -> (n, 4) scores aligned
    with ``pairs.images``; ``sources``: those to try, in order (default: those of ``scores``);
    ``placement``: see :class:`~cloudpipe.algorithms.thresholds.Sweep`.
    """
    sources = list(scores) if sources is None else list(sources)
    candidates = candidate_gates(sources)
    blended = [blend(scores, {c: gate for c in active().classes}) for gate in candidates]
    names = [gate_name(g) for g in candidates]
    sweeps = {name: choose_thresholds(p, pairs, placement, rule) for name, p in zip(names, blended)}
    table = {name: np.array([sweeps[name][c].score for c in active().classes]) for name in names}
    gates, chosen, kept = {}, {}, {}
    for k, c in enumerate(active().classes):
        best = best_index(np.array([table[name][k] for name in names]))
        if rule == "robust" and best != 0:
            why = _beats_first(blended, best, pairs, k, names, float(table[names[best]][k] - table[names[0]][k]))
            if why is not None:
                best = 0
                if why.costs:
                    kept[c] = why
        gates[c], chosen[c] = candidates[best], sweeps[names[best]][c]
    return GateChoice(gates, chosen, table, kept)


def _beats_first(blended: list[np.ndarray], best: int, pairs: PairScores, k: int, names: list[str],
                 gain: float) -> DefaultKept | None:
    """None when candidate ``best`` beats the first one of class ``k`` on held-out images, each
    gate's threshold tuned again on the other images; else why the first one stays (``names``
    of the candidates, ``gain``: the in-sample one)."""
    keep, blank = pairs.keep[:, k], pairs.blank[:, k]

    def score(j: int, rows: np.ndarray, threshold: float) -> np.ndarray:
        return np.where(blended[j][rows, k] < threshold, blank[rows], keep[rows])

    def choose_on(rows: np.ndarray) -> tuple[float, float]:
        return tuple(plateau_threshold(blended[j][rows, k], keep[rows], blank[rows]) for j in (best, 0))

    def gain_of(rows: np.ndarray, thresholds: tuple[float, float]) -> np.ndarray:
        return score(best, rows, thresholds[0]) - score(0, rows, thresholds[1])

    return check_held_out(len(keep), choose_on, gain_of, f"the {names[0]} gate", f"the {names[best]} gate", gain)
