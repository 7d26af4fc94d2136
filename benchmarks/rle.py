"""The speed suite's RLE rows: cloudpipe.core.rle against the seed's loop-based codec, per mask,
on seeded blocky masks like the competition's labels (1-3 jagged polygons covering 10-50%),
drawn at the size measured; run counts matter more than pixels, so the notes give them."""

from __future__ import annotations

import cv2
import numpy as np

from benchmarks import seed
from benchmarks.common import over, row, time_interleaved
from cloudpipe.core import rle

SIZES: tuple[tuple[int, int], ...] = ((350, 525), (1400, 2100))
# Speed-up targets (seed time / cloudpipe time) from the issue; None: no target set.
TARGETS: dict[str, float | None] = {
    "rle decode 350x525": 7.0,
    "rle encode 350x525": 3.0,
    "rle decode 1400x2100": None,
    "rle encode 1400x2100": 8.0,
}


def _jagged_polygon(rng: np.random.Generator, height: int, width: int, area: float) -> np.ndarray:
    """A rotated rectangle (sometimes a skewed quadrilateral) of about ``area`` pixels with
    jittered, densified edges, as int32 vertices (x, y) for ``cv2.fillPoly``."""
    aspect = rng.uniform(0.5, 2.5)  # width / height of the region
    rh = np.sqrt(area / aspect)
    rw = rh * aspect
    cy = rng.uniform(0.15, 0.85) * height
    cx = rng.uniform(0.15, 0.85) * width
    corners = np.array([[-rw, -rh], [rw, -rh], [rw, rh], [-rw, rh]]) / 2
    if rng.random() < 0.4:  # a skewed quadrilateral instead of a rectangle
        corners += rng.normal(0, 0.12, corners.shape) * np.array([rw, rh])
    angle = np.deg2rad(rng.choice([0.0, rng.uniform(-25, 25)], p=[0.4, 0.6]))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    corners = corners @ rot.T + np.array([cx, cy])
    # Densify the edges and jitter the points: ragged (for some regions, strongly) borders.
    step = max(height, width) / rng.uniform(40, 120)
    jitter = max(height, width) * rng.choice([0.0, 0.003, 0.01], p=[0.2, 0.5, 0.3])
    points = []
    for a, b in zip(corners, np.roll(corners, -1, axis=0)):
        n = max(2, int(np.hypot(*(b - a)) / step))
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        points.append(a + t * (b - a))
    pts = np.concatenate(points)
    pts += rng.normal(0, jitter, pts.shape) if jitter else 0
    return np.round(pts).astype(np.int32)


def make_masks(n: int, shape: tuple[int, int], seed_: int = 0) -> list[np.ndarray]:
    """``n`` seeded uint8 (H, W) 0/1 masks of 1-3 blocky regions covering ~10-50% in total."""
    rng = np.random.default_rng(seed_)
    height, width = shape
    masks = []
    for _ in range(n):
        mask = np.zeros(shape, np.uint8)
        k = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
        total = rng.uniform(0.12, 0.55) * height * width  # overlaps/clipping pull it down a bit
        shares = rng.dirichlet(np.full(k, 2.0))
        for share in shares:
            cv2.fillPoly(mask, [_jagged_polygon(rng, height, width, share * total)], 1)
        masks.append(mask)
    return masks


def rows(n_masks: int = 200, repeats: int = 5, sizes: tuple[tuple[int, int], ...] = SIZES) -> list[dict]:
    """Measure decode and encode at each size.

    Args:
        n_masks: masks generated per size.
        repeats: timed passes over all masks, per implementation; the best pass counts.
        sizes: (H, W) mask shapes.

    Returns:
        One dict per (direction, size): ``benchmark``, ``seed_s`` and ``cloudpipe_s`` (seconds
        per mask), ``ratio`` (seed / cloudpipe), and ``runs_per_mask``, ``coverage`` (mean
        fraction of pixels set) and ``target`` (the ratio asked for, or None).
    """
    out = []
    for shape in sizes:
        h, w = shape
        masks = make_masks(n_masks, shape, seed_=h * 10_000 + w)
        rles = [seed.mask2rle(m) for m in masks]
        # The two codecs must agree on every mask before their speed means anything.
        for i, (m, s) in enumerate(zip(masks, rles)):
            if rle.mask2rle(m) != s:
                raise AssertionError(f"encode differs on mask {i} at {h}x{w}")
            ours = rle.rle2mask(s, shape)
            if not (np.array_equal(seed.rle_decode(s, shape), ours) and np.array_equal(ours, m)):
                raise AssertionError(f"decode differs on mask {i} at {h}x{w}")
        runs = float(np.mean([s.count(" ") + 1 for s in rles])) / 2
        coverage = float(np.mean([m.mean() for m in masks]))
        note = f"{len(masks)} masks, best of {repeats}; {runs:.0f} runs/mask, {coverage:.0%} cover"
        pairs = {
            "decode": (rles, lambda s, shape=shape: seed.rle_decode(s, shape), lambda s, shape=shape: rle.rle2mask(s, shape)),
            "encode": (masks, seed.mask2rle, rle.mask2rle),
        }
        for name, (items, seed_fn, ours_fn) in pairs.items():
            t = time_interleaved({"seed": over(seed_fn, items), "ours": over(ours_fn, items)}, repeats)
            benchmark = f"rle {name} {h}x{w}"
            out.append(row(benchmark, t["seed"] / len(items), t["ours"] / len(items), TARGETS.get(benchmark),
                           unit="ms/mask", note=note, runs_per_mask=runs, coverage=coverage))
        del masks, rles
    return out

