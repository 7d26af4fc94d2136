"""RLE speed: cloudpipe.core.rle against the seed notebooks' loop-based codec (benchmarks/seed.py).

Run as ``python benchmarks/bench_rle.py`` (prints a table), or call :func:`run` to get the rows
(``benchmark``, ``seed_s``, ``cloudpipe_s``, ``ratio``) for a combined benchmark table.

The masks are meant to look like the competition's labels: large blocky regions (1-3 rotated
rectangles / polygons per mask, together covering roughly 10-50% of the image) with slightly
jagged borders, drawn with ``cv2.fillPoly`` directly at the size being measured. Run counts
matter far more than pixel counts for the decoder, so the table reports them too.

Times are per mask: the best of several passes over all masks, seed and cloudpipe passes
interleaved so that load from other processes hits both alike. A pass goes through every
mask once, so masks are mostly not in the CPU cache when they are encoded (200 masks at
1400x2100 are ~590 MB): reading them from memory is part of both implementations' time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `cloudpipe` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import seed  # noqa: E402
from cloudpipe.core import rle as rle  # noqa: E402

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


def _one_pass(fn: Callable[[Any], object], items: list) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - t0


def _time_pair(seed_fn: Callable, ours_fn: Callable, items: list, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` seconds per item for each function, passes interleaved."""
    seed_t, ours_t = [], []
    for _ in range(repeats):
        seed_t.append(_one_pass(seed_fn, items))
        ours_t.append(_one_pass(ours_fn, items))
    return min(seed_t) / len(items), min(ours_t) / len(items)


def run(
    n_masks: int = 200, repeats: int = 5, sizes: tuple[tuple[int, int], ...] = SIZES
) -> list[dict]:
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
    rows = []
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
        dec = _time_pair(
            lambda s, shape=shape: seed.rle_decode(s, shape), lambda s, shape=shape: rle.rle2mask(s, shape), rles, repeats
        )
        enc = _time_pair(seed.mask2rle, rle.mask2rle, masks, repeats)
        for name, (seed_s, ours_s) in (("decode", dec), ("encode", enc)):
            rows.append(
                {
                    "benchmark": f"rle {name} {h}x{w}",
                    "seed_s": seed_s,
                    "cloudpipe_s": ours_s,
                    "ratio": seed_s / ours_s,
                    "runs_per_mask": runs,
                    "coverage": coverage,
                    "target": TARGETS.get(f"rle {name} {h}x{w}"),
                }
            )
        del masks, rles
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows of :func:`run` as a fixed-width text table."""
    lines = [
        f"{'benchmark':<22} {'runs/mask':>9} {'cover':>6} {'seed ms':>9} "
        f"{'cloudpipe ms':>12} {'ratio':>7} {'target':>7}"
    ]
    for r in rows:
        target = "" if r["target"] is None else f">={r['target']:g}x"
        verdict = "" if r["target"] is None else ("  met" if r["ratio"] >= r["target"] else "  MISSED")
        lines.append(
            f"{r['benchmark']:<22} {r['runs_per_mask']:>9.0f} {r['coverage']:>6.1%} "
            f"{r['seed_s'] * 1e3:>9.3f} {r['cloudpipe_s'] * 1e3:>12.3f} {r['ratio']:>6.1f}x "
            f"{target:>7}{verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=200, help="masks per size")
    parser.add_argument("--repeats", type=int, default=5, help="passes per implementation")
    args = parser.parse_args(argv)
    rows = run(args.masks, args.repeats)
    print(
        f"RLE codec, time per mask: best of {args.repeats} passes over {args.masks} seeded "
        f"blocky masks per size\n(runs/mask = mean number of runs, cover = mean fraction of "
        f"pixels set; ratio = seed / cloudpipe)"
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
