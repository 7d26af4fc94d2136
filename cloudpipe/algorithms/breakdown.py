"""Where the Dice goes: the same segmentation masks scored several ways, from per-pair
statistics, presence probabilities and thresholds (arrays in, tables out).

A pair (image, class) scores its segmentation Dice when kept and, when blanked, 1 if the class
is absent and 0 if it is present. The oracle blanks exactly the absent classes: the most a
presence stage can add to these masks. The capture share is the part of the oracle's gain
over the segmentation alone that a gate takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cloudpipe.algorithms.gating import GateSpec, keep
from cloudpipe.core.metric import PairStats, dice_score, dice_table
from cloudpipe.core.profile import active

DECISIONS = ("kept, present", "kept, absent", "blanked, present", "blanked, absent")
"""The four kinds of presence decision, in table order."""


def gated_dice(stats: PairStats, keep: np.ndarray) -> np.ndarray:
    """Per-pair Dice (n, 4) when the pairs where ``keep`` is False are blanked."""
    return np.where(keep, stats.dice(), stats.blanked_dice())


def _row(name: str, dice: np.ndarray) -> dict:
    return {"submission": name, **dice_table(dice)}


TUNED_ROW = "gated, tuned thresholds"
IN_SAMPLE_ROW = "gated, tuned on these images (in-sample)"
"""The tuned gate's row when its thresholds were tuned on the very pairs scored: an upper bound."""


def headline(stats: PairStats, probs: np.ndarray | None = None, tuned: GateSpec | None = None,
             in_sample: bool = False) -> list[dict]:
    """The headline rows: mean Dice per class and overall of all masks empty, the
    segmentation alone, gated at 0.5 and by the ``tuned`` gate (when ``probs`` are given), the
    oracle, and the capture share of the tuned gate (or of the 0.5 gate without one).
    ``probs`` (n, 4) are aligned with ``stats.images``; ``tuned`` is applied to them as
    ``predict`` applies it; ``in_sample``: it was tuned on these pairs (its row is
    :data:`IN_SAMPLE_ROW`).
    """
    alone = stats.dice()
    truth_present = stats.truth_area > 0
    oracle = gated_dice(stats, truth_present)
    rows = [_row("all masks empty", dice_score(np.zeros_like(stats.truth_area), np.zeros_like(stats.truth_area), stats.truth_area)),
            _row("segmentation alone", alone)]
    gate = None
    if probs is not None:
        gate = gated_dice(stats, keep(probs, 0.5))
        rows.append(_row("gated at 0.5", gate))
        if tuned is not None:
            gate = gated_dice(stats, tuned.keep(probs, stats.pred_area > 0))
            rows.append(_row(IN_SAMPLE_ROW if in_sample else TUNED_ROW, gate))
    rows.append(_row("gated by true presence (oracle)", oracle))
    if gate is not None:
        gain, possible = rows[-2], rows[-1]
        share = {"submission": "capture share (gate gain / oracle gain)"}
        for key in (*active().classes, "mean"):
            room = possible[key] - rows[1][key]
            share[key] = float((gain[key] - rows[1][key]) / room) if room > 1e-12 else float("nan")
        rows.append(share)
    return rows


@dataclass(frozen=True)
class DecisionTable:
    """Per class, the count of each kind of decision and what those pairs add to the class's
    mean Dice compared with keeping every mask (positive: the gate gained)."""

    counts: np.ndarray  # (4 classes, 4 decisions) int
    effect: np.ndarray  # (4 classes, 4 decisions) float, in Dice points of the class mean

    def rows(self) -> list[dict]:
        """One row per class and decision kind."""
        return [{"class": c, "decision": d, "pairs": int(self.counts[k, j]), "dice_effect": float(self.effect[k, j])}
                for k, c in enumerate(active().classes) for j, d in enumerate(DECISIONS)]


def decisions(stats: PairStats, keep: np.ndarray) -> DecisionTable:
    """Count the four kinds of presence decision per class and their effect on the class mean
    Dice against keeping every mask: blanking an absent class gains ``1 - dice``, blanking a
    present one costs its ``dice``; kept pairs change nothing (their effect is 0, listed so the
    table is complete)."""
    present = stats.truth_area > 0
    change = gated_dice(stats, keep) - stats.dice()
    kinds = [keep & present, keep & ~present, ~keep & present, ~keep & ~present]
    n = len(stats.images)
    counts = np.stack([kind.sum(axis=0) for kind in kinds], axis=1)
    effect = np.stack([np.where(kind, change, 0.0).sum(axis=0) / max(n, 1) for kind in kinds], axis=1)
    return DecisionTable(counts, effect)


def binned_mean(values: np.ndarray, by: np.ndarray, edges: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` and the count in each bin of ``by`` (``edges[i] <= by < edges[i + 1]``,
    the last bin closed); NaN where a bin is empty."""
    edges = np.asarray(edges, dtype=np.float64)
    index = np.clip(np.searchsorted(edges, by, side="right") - 1, 0, len(edges) - 2)
    inside = (by >= edges[0]) & (by <= edges[-1])
    count = np.bincount(index[inside], minlength=len(edges) - 1)
    total = np.bincount(index[inside], weights=values[inside], minlength=len(edges) - 1)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan), count


def rank_images(dice: np.ndarray, images: Sequence[str], k: int) -> tuple[list[str], list[str]]:
    """The ``k`` images of lowest and of highest mean Dice over their classes (ties by order)."""
    mean = dice.mean(axis=1)
    order = np.argsort(mean, kind="stable")
    worst = [images[i] for i in order[:k]]
    best = [images[i] for i in order[::-1][:k] if images[i] not in worst]
    return worst, best
