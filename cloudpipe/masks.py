"""Operations on binary masks: nearest-neighbour resizing, small-component removal."""

from __future__ import annotations

import cv2
import numpy as np


def resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) mask to ``shape`` (same rule as OpenCV's
    ``INTER_NEAREST``: destination pixel i takes source pixel ``floor(i * H / h)``)."""
    if mask.shape == tuple(shape):
        return mask
    rows = np.arange(shape[0]) * mask.shape[0] // shape[0]
    cols = np.arange(shape[1]) * mask.shape[1] // shape[1]
    return mask[np.ix_(rows, cols)]


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected components with fewer than ``min_size`` pixels from a 0/1 mask."""
    if min_size <= 1 or not mask.any():
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8)
    keep = np.zeros(count, dtype=np.uint8)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_size
    return keep[labels]
