"""Pseudo-labels: which test images a tuned ensemble labels confidently enough to train on.

The 3rd, 16th (+0.003) and 34th places trained on test images labelled by their own ensemble,
kept only where it was sure. :class:`PseudoRule` says what "sure" means; :func:`confident`
applies it to probabilities and mask areas (arrays in, a boolean per image out).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cloudpipe.core.errors import CloudpipeError


@dataclass(frozen=True)
class PseudoRule:
    """When a test image's predicted labels are trusted: every class's probability at least
    ``min_confidence`` (present) or at most ``1 - min_confidence`` (absent), in (0.5, 1]; every
    mask the image keeps at least ``min_area`` pixels (at the submission's mask size; 0: any)."""

    min_confidence: float = 0.9
    min_area: int = 0

    def __post_init__(self) -> None:
        if not 0.5 < self.min_confidence <= 1:
            raise CloudpipeError(f"min_confidence = {self.min_confidence} must be in (0.5, 1]")
        if self.min_area < 0:
            raise CloudpipeError(f"min_area = {self.min_area} must be >= 0")

    def to_dict(self) -> dict:
        """The rule as plain values (saved beside the pseudo-labels)."""
        return asdict(self)


def confident(probs: np.ndarray, areas: np.ndarray, rule: PseudoRule) -> np.ndarray:
    """Which images (n,) to pseudo-label, from presence ``probs`` (n, 4; what ``cloudpipe predict``
    gated on) and the pixels of each predicted mask (``areas``, n x 4): every class decided with
    ``rule.min_confidence``, the masks agreeing with those decisions (a mask where the class is
    present, none where it is absent), and every mask at least ``rule.min_area`` pixels."""
    probs, areas = np.asarray(probs, dtype=np.float64), np.asarray(areas)
    present, absent = probs >= rule.min_confidence, probs <= 1 - rule.min_confidence
    decided = (present | absent).all(axis=1)
    agrees = ((areas > 0) == present).all(axis=1)
    large = np.where(areas > 0, areas >= rule.min_area, True).all(axis=1)
    return decided & agrees & large
