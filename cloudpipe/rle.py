"""Kaggle run-length encoding: 1-indexed ``start length`` pairs over column-major pixels.

Both directions are vectorised numpy: no Python loop over runs or pixels.
"""

from __future__ import annotations

import numpy as np

from cloudpipe.errors import RLEError


def mask2rle(mask: np.ndarray) -> str:
    """Encode a mask as Kaggle RLE.

    Works on the (H, W) array as it lies in memory: run boundaries are found within columns
    (row-to-row changes) and across column ends, then put in column-major order, so no
    transposed copy of the full image is made.

    Args:
        mask: array of shape (H, W); any non-zero pixel is "in the mask".

    Returns:
        ``"start length start length ..."`` with 1-indexed column-major starts; ``""`` for an
        empty mask.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    on = mask.view(bool) if mask.dtype == bool else mask != 0
    height, width = on.shape
    # Changes between row r and r + 1 of column c: a run boundary at flat index c*H + r + 1.
    inner = np.flatnonzero(on[1:] != on[:-1])
    rows, cols = np.divmod(inner, width)
    inner_bounds = cols * height + rows + 1
    # Between the bottom of column c - 1 and the top of column c (and the two image ends).
    edge = np.zeros(width + 1, dtype=bool)
    edge[:-1] = on[0]
    below = np.zeros(width + 1, dtype=bool)
    below[1:] = on[-1]
    edge_bounds = np.flatnonzero(edge != below) * height
    runs = np.sort(np.concatenate((inner_bounds, edge_bounds)))
    if runs.size == 0:
        return ""
    runs[1::2] -= runs[::2]
    runs[::2] += 1
    # One C-level formatting call over a plain list is several times faster than str() per item.
    return str(runs.tolist())[1:-1].replace(",", "")


def parse_rle(rle: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate RLE text into 0-indexed ``(starts, lengths)`` arrays.

    Raises:
        RLEError: non-integer tokens, odd token count, start or length < 1, starts not
            strictly increasing, overlapping runs, or runs past ``H * W``.
    """
    text = rle.strip()
    if not text:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    try:
        values = np.fromstring(text, dtype=np.int64, sep=" ")
    except ValueError:  # numpy >= 2.? raises on trailing garbage; older versions warn
        values = np.empty(0, np.int64)
    if values.size != text.count(" ") + 1:  # odd spacing, or a token that is not an integer
        tokens = text.split()
        for token in tokens:
            if not (token.isascii() and token.isdigit()):
                raise RLEError(f"RLE token {token!r} is not a positive integer")
        values = np.array(tokens, dtype=np.int64)
    if values.size % 2:
        raise RLEError(f"RLE has an odd number of tokens ({values.size})")
    starts = values[0::2] - 1
    lengths = values[1::2]
    ends = starts + lengths
    if lengths.min() < 1:
        raise RLEError(f"RLE length {int(lengths[lengths < 1][0])} is below 1")
    if starts.min() < 0:
        raise RLEError(f"RLE start {int(starts[starts < 0][0]) + 1} is below 1")
    if starts.size > 1 and (starts[1:] - ends[:-1]).min() < 0:
        # Lengths are >= 1, so "no overlap" implies "strictly increasing"; say which broke.
        i = int(np.flatnonzero(starts[1:] < ends[:-1])[0])
        if starts[i + 1] <= starts[i]:
            raise RLEError(
                f"RLE starts not strictly increasing ({starts[i] + 1} then {starts[i + 1] + 1})"
            )
        raise RLEError(
            f"RLE runs overlap (run at {starts[i] + 1} of length {lengths[i]} "
            f"reaches past the next start {starts[i + 1] + 1})"
        )
    size = shape[0] * shape[1]
    if ends[-1] > size:
        raise RLEError(
            f"RLE run at {starts[-1] + 1} of length {lengths[-1]} ends past pixel {size} "
            f"of a {shape[0]}x{shape[1]} mask"
        )
    return starts, lengths


def rle2mask(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode Kaggle RLE into a mask.

    Args:
        rle: ``"start length ..."`` text; empty (or whitespace) means an empty mask.
        shape: (H, W) of the mask.

    Returns:
        uint8 array of shape (H, W) with values 0/1 (Fortran-ordered; a view, no transpose copy).

    Raises:
        RLEError: when ``rle`` is not valid for ``shape`` (see :func:`parse_rle`).
    """
    starts, lengths = parse_rle(rle, shape)
    size = shape[0] * shape[1]
    if starts.size == 0:
        return np.zeros(shape, dtype=np.uint8, order="F")
    # Alternating 0-runs and 1-runs: gap, run, gap, run, ..., tail gap.
    bounds = np.empty(2 * starts.size + 2, dtype=np.int64)
    bounds[0] = 0
    bounds[1:-1:2] = starts
    bounds[2:-1:2] = starts + lengths
    bounds[-1] = size
    values = np.zeros(2 * starts.size + 1, dtype=np.uint8)
    values[1::2] = 1
    return np.repeat(values, np.diff(bounds)).reshape(shape, order="F")

