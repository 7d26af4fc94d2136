"""Operations on binary masks: decoding a pair's set, nearest-neighbour resizing, small-component removal."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from cloudpipe.core.rle import rle2mask


def _nearest_index(source: int, target: int) -> np.ndarray:
    """Source index of each of ``target`` pixels, computed exactly as OpenCV's ``resizeNN``:
    ``min(floor(i * (1 / (target / source))), source - 1)`` in double precision. (The exact
    integer ``i * source // target`` differs from it for ratios such as 2100 -> 10.)"""
    scale = 1.0 / (target / source)
    return np.minimum(np.floor(np.arange(target) * scale).astype(np.int64), source - 1)


def resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) mask to ``shape``, pixel for pixel the same as
    ``cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)``."""
    if mask.shape == tuple(shape):
        return mask
    rows = _nearest_index(mask.shape[0], shape[0])
    cols = _nearest_index(mask.shape[1], shape[1])
    return mask[np.ix_(rows, cols)]


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected components with fewer than ``min_size`` pixels from a 0/1 mask."""
    if min_size <= 1 or not mask.any():
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8)
    keep = np.zeros(count, dtype=np.uint8)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_size
    return keep[labels]


def decode_masks(rles: Sequence[str], shape: tuple[int, int], size: tuple[int, int] | None = None) -> np.ndarray:
    """One image's masks (k, H, W) from its RLE strings at ``shape``, resized (nearest) to
    ``size`` when given."""
    return np.stack([resize_nearest(rle2mask(r, shape), size or shape) for r in rles])


def tint(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """An RGB uint8 image (H, W, 3) with a class's truth (H, W) in green and prediction in red,
    their overlap yellow, blended in at 45%."""
    t, p = truth.astype(bool), pred.astype(bool)
    colour = np.zeros((*t.shape, 3), np.float32)
    colour[t & ~p], colour[p & ~t], colour[t & p] = (0, 255, 0), (255, 0, 0), (255, 255, 0)
    shown = np.where((t | p)[..., None], 0.55 * image + 0.45 * colour, image)
    return shown.clip(0, 255).astype(np.uint8)


def panel_grid(count: int) -> tuple[int, int]:
    """(rows, columns) of the most nearly square grid holding ``count`` panels, one per class
    (4: 2 x 2; 2: 1 x 2; 5: 2 x 3)."""
    columns = int(np.ceil(np.sqrt(count)))
    return int(np.ceil(count / columns)), columns
