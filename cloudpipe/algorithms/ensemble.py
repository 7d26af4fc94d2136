"""Ensembling: the weighted mean of several runs' probabilities.

Segmentation probabilities are uint8 (probability * 255) stores of shape (n, 4, H, W); their
mean is accumulated in float32 and rounded back to uint8, chunk by chunk, so memory holds one
chunk whatever the number of images. :func:`mean_stores` averages whole stores;
:class:`RunningMean` does the same one run at a time, for runs that arrive as streams; both
add in the same order with the same arithmetic, so they give identical bytes. Classifier
probabilities (n, 4) are averaged by :func:`mean_probs`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cloudpipe.core.errors import CloudpipeError

CHUNK = 32  # images per step: ~23 MB of uint8 at clouds' 4 x 350 x 525


def normalise_weights(weights: Sequence[float] | None, count: int, per: str = "--run") -> list[float]:
    """One weight per run (or per ``per``: the option each weight goes with), scaled to sum 1
    (equal weights when None). Scaled by the largest first, so that huge weights cannot
    overflow the sum (1e308 twice is 0.5 each, not 0).

    Raises:
        CloudpipeError: not one weight per run, a weight that is not a positive number, or
            weights so far apart that the smallest would count for nothing.
    """
    if weights is None or len(weights) == 0:
        weights = [1.0] * count
    if len(weights) != count:
        raise CloudpipeError(f"give one --ensemble-weight per {per}: {len(weights)} weight(s) for {count} {per.lstrip('-')}(s)")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise CloudpipeError(f"weights must be positive numbers, got {', '.join(f'{w:g}' for w in weights)}")
    largest = float(max(weights))
    scaled = [float(w) / largest for w in weights]
    total = sum(scaled)
    out = [w / total for w in scaled]
    if not all(w > 0 for w in out):
        raise CloudpipeError(f"weights {', '.join(f'{w:g}' for w in weights)} are too far apart: the smallest would "
                             "count for nothing")
    return out


def _add(total: np.ndarray, values: np.ndarray, weight: float) -> None:
    total += np.float32(weight) * values.astype(np.float32)


def _to_uint8(total: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(total), 0, 255).astype(np.uint8)


def mean_stores(stores: Sequence[np.ndarray], weights: Sequence[float], out: np.ndarray,
                rows: Sequence[np.ndarray] | None = None, chunk: int = CHUNK) -> np.ndarray:
    """Weighted mean of uint8 stores (n_i, ...) into the uint8 ``out`` (n, ...), ``chunk``
    images at a time; returns ``out``. ``weights``: one per store, normalised
    (:func:`normalise_weights`); ``rows``: per store, the row of each of ``out``'s images in it
    (None: the same order)."""
    if len(stores) != len(weights):
        raise CloudpipeError(f"{len(weights)} weight(s) for {len(stores)} store(s)")
    for start in range(0, len(out), chunk):
        stop = min(start + chunk, len(out))
        total = np.zeros((stop - start, *out.shape[1:]), np.float32)
        for i, (store, weight) in enumerate(zip(stores, weights)):
            _add(total, store[start:stop] if rows is None else store[rows[i][start:stop]], weight)
        out[start:stop] = _to_uint8(total)
    return out


class RunningMean:
    """A weighted mean of uint8 probabilities built one run at a time (runs stream in
    batches) into ``total``, float32 zeros of the final shape (n, ...), which may be a memory
    map, so memory stays flat."""

    def __init__(self, total: np.ndarray):
        self.total = total

    def add(self, rows: np.ndarray, values: np.ndarray, weight: float) -> None:
        """Add ``weight * values`` (uint8, one entry per row) at ``rows``; runs in ensemble order."""
        part = self.total[rows]
        _add(part, values, weight)
        self.total[rows] = part

    def write(self, out: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
        """Round the mean into the uint8 ``out``, chunk by chunk; returns ``out``."""
        for start in range(0, len(out), chunk):
            out[start:start + chunk] = _to_uint8(self.total[start:start + chunk])
        return out


def mean_probs(probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted mean (float64) of several runs' (n, 4) presence probabilities, rows aligned."""
    if len(probs) != len(weights):
        raise CloudpipeError(f"{len(weights)} weight(s) for {len(probs)} set(s) of probabilities")
    return sum(np.asarray(p, np.float64) * w for p, w in zip(probs, weights))
