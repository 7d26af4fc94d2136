"""Per-class presence thresholds, searched exactly on the competition metric.

A pair (image, class) is blanked when its presence probability is below the class threshold.
Blanking turns the pair's Dice from its segmentation Dice into 1 (class absent) or 0 (class
present). Dice is a mean over pairs, so each class's threshold is searched on its own, and
exactly: every distinct probability is a candidate, scored for all candidates at once with one
sort and cumulative sums over per-pair scores computed once (:func:`sweep`).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from cloudpipe.algorithms.robust import DefaultKept, Rule, Z, best_index, check_held_out, check_rule, plateau
from cloudpipe.core.choices import PLACEMENTS, Placement
from cloudpipe.core.errors import BadValue, CloudpipeError
from cloudpipe.core.metric import PairStats, pair_stats
from cloudpipe.core.profile import active

Objective = Literal["dice", "accuracy"]
METRIC_NAMES: dict[str, str] = {"dice": "dice", "accuracy": "acc"}


def check_threshold(value: object, what: str) -> float:
    """A threshold as float in [0, 1], or a :class:`~cloudpipe.core.errors.BadValue` naming ``what``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise BadValue(f"{what} threshold {value!r} is not a number in [0, 1]")
    return float(value)


def check_thresholds(thresholds: Mapping[str, object]) -> dict[str, float]:
    """Every class's threshold (:func:`check_threshold`), in class order; a missing class is a BadValue."""
    missing = [c for c in active().classes if c not in thresholds]
    if missing:
        raise BadValue(f"no threshold for {', '.join(missing)}")
    return {c: check_threshold(thresholds[c], c) for c in active().classes}


@dataclass(frozen=True)
class Sweep:
    """One class's mean score (``scores``, m) when the pairs of probability below each candidate
    threshold (:func:`candidate_thresholds`, ascending) are blanked, and the index ``best`` of
    the chosen one. ``placement`` ``exact``: the threshold is the chosen candidate;
    ``midpoint``: halfway between it and the next lower candidate (above the largest
    probability: halfway to 1), which blanks the same validation pairs with more margin on both
    sides. ``kept``: with the ``robust`` rule, why the default (0: blank nothing) was kept over
    the threshold the scores favoured."""

    thresholds: np.ndarray
    scores: np.ndarray
    best: int
    placement: Placement = "exact"
    kept: DefaultKept | None = None

    @property
    def threshold(self) -> float:
        """The chosen threshold, placed as :attr:`placement` says."""
        chosen = float(self.thresholds[self.best])
        if self.placement == "exact" or self.best == 0:
            return chosen
        lower = float(self.thresholds[self.best - 1])
        blanks_all = self.best == len(self.thresholds) - 1 and np.nextafter(lower, np.inf) == chosen
        middle = (lower + 1.0) / 2 if blanks_all else (lower + chosen) / 2
        return middle if middle > lower else chosen

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


def sweep(probs: np.ndarray, keep: np.ndarray, blank: np.ndarray, placement: Placement = "exact",
          rule: Rule = "best", z: float = Z) -> Sweep:
    """Score every candidate threshold of one class in O(n log n), and choose one by ``rule``.

    At threshold ``t`` a pair (of presence probability ``probs``) scores ``blank`` (e.g. 1 if the
    class is absent, else 0) when its probability is < ``t`` and ``keep`` (e.g. its segmentation
    Dice) otherwise; sorted by probability, the blanked pairs are a prefix, so the mean score at
    every candidate comes from two cumulative sums, and so does the standard error of its paired
    difference from the best candidate (two candidates differ on the pairs between their cuts).
    ``rule`` ``best``: the best score, ties broken toward the lower threshold; ``robust``: the
    middle of the near-best thresholds (``z`` standard errors), or 0 (blank nothing) unless
    blanking pays on held-out pairs (:mod:`cloudpipe.algorithms.robust`). ``placement``: see
    :class:`Sweep`.
    """
    if placement not in PLACEMENTS:
        raise CloudpipeError(f"threshold placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    probs = np.asarray(probs, dtype=np.float64)
    if probs.size == 0:
        raise CloudpipeError("no pairs to tune a threshold on")
    keep, blank = np.asarray(keep, np.float64), np.asarray(blank, np.float64)
    thresholds, scores, gap, se = _curve(probs, keep, blank)
    if check_rule(rule) == "best":
        return Sweep(thresholds, scores, best_index(scores), placement)
    chosen = plateau(scores, gap, se, thresholds, z)

    def choose_on(rows: np.ndarray) -> float:
        return plateau_threshold(probs[rows], keep[rows], blank[rows], z)

    def gain_of(rows: np.ndarray, threshold: float) -> np.ndarray:
        return np.where(probs[rows] < threshold, blank[rows] - keep[rows], 0.0)

    kept = None
    if chosen != 0:
        kept = check_held_out(probs.size, choose_on, gain_of, "no gating (threshold 0)",
                              f"threshold {thresholds[chosen]:.3g}", float(scores[chosen] - scores[0]), z)
        if kept is not None:
            chosen = 0  # blanking gains nothing beyond the noise on pairs it was not tuned on (or too few to tell)
    return Sweep(thresholds, scores, chosen, placement, kept)


def plateau_threshold(probs: np.ndarray, keep: np.ndarray, blank: np.ndarray, z: float = Z) -> float:
    """The middle of the near-best thresholds of one class (no held-out check; see :func:`sweep`)."""
    t, scores, gap, se = _curve(probs, keep, blank)
    return float(t[plateau(scores, gap, se, t, z)])


def _curve(probs: np.ndarray, keep: np.ndarray, blank: np.ndarray) -> tuple[np.ndarray, ...]:
    """Candidate thresholds, their mean scores, and each one's paired gap to the best and its
    standard error (see :func:`~cloudpipe.algorithms.robust.paired_gaps`)."""
    n = probs.size
    order = np.argsort(probs, kind="stable")
    gain = blank[order] - keep[order]  # what blanking each pair adds, by probability
    gained = np.concatenate([[0.0], np.cumsum(gain)])
    gained_sq = np.concatenate([[0.0], np.cumsum(gain ** 2)])
    thresholds = candidate_thresholds(probs)
    cut = np.searchsorted(probs[order], thresholds, side="left")  # pairs blanked at each candidate
    scores = (keep.sum() + gained[cut]) / n
    at_best = cut[best_index(scores)]
    total, total_sq = gained[cut] - gained[at_best], np.abs(gained_sq[cut] - gained_sq[at_best])
    variance = np.maximum(total_sq - total ** 2 / n, 0.0) / max(n - 1, 1)
    return thresholds, scores, total / n, np.sqrt(variance / n)


@dataclass(frozen=True)
class PairScores:
    """What each (image, class) pair scores kept or blanked, arrays of shape (n_images, 4)."""

    images: list[str]
    keep: np.ndarray
    blank: np.ndarray
    present: np.ndarray  # bool: the class is in the image (blanking it is a mistake)
    drawn: np.ndarray | None = None  # bool: the pair has a non-empty mask (None: all have)

    def mean(self, absent: np.ndarray) -> float:
        """Mean score when the pairs ``absent`` (n, 4) are blanked and the others kept."""
        return float(np.where(absent, self.blank, self.keep).mean())

    @classmethod
    def dice(cls, truth: pd.DataFrame, pred: pd.DataFrame, truth_shape: tuple[int, int],
             pred_shape: tuple[int, int]) -> PairScores:
        """Kaggle Dice of segmentation predictions kept or blanked (wide RLE frames; the
        images of ``pred``)."""
        return cls.of_stats(pair_stats(truth, pred, truth_shape, pred_shape))

    @classmethod
    def of_stats(cls, stats: PairStats) -> PairScores:
        """Kaggle Dice of each pair kept (its segmentation Dice) or blanked, from its statistics."""
        return cls(stats.images, stats.dice(), stats.blanked_dice(), stats.truth_area > 0, stats.pred_area > 0)

    @classmethod
    def accuracy(cls, labels: pd.DataFrame) -> PairScores:
        """Accuracy of "present" (kept) or "absent" (blanked) against 0/1 presence labels."""
        present = labels.loc[:, list(active().classes)].to_numpy() > 0
        return cls(list(labels.index), present.astype(np.float64), (~present).astype(np.float64), present)


def choose_thresholds(probs: np.ndarray, scores: PairScores, placement: Placement = "exact",
                      rule: Rule = "best") -> dict[str, Sweep]:
    """The sweep of every class (class order), from probabilities (n, 4) aligned with
    ``scores.images``, thresholds placed as ``placement`` says and chosen by ``rule``."""
    return {c: sweep(probs[:, k], scores.keep[:, k], scores.blank[:, k], placement, rule) for k, c in enumerate(active().classes)}


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
