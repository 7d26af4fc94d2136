"""Threshold curves written as PNG."""

from __future__ import annotations

import cv2
import numpy as np

from cloudpipe.algorithms.thresholds import sweep
from cloudpipe.plots import save_png, threshold_figure
from tests.conftest import CLASSES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sweeps(n: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = {}
    for c in CLASSES:
        present = rng.random(n) < 0.5
        out[c] = sweep(rng.random(n).round(2), np.where(present, rng.random(n), 0.0), (~present).astype(float))
    return out


def test_threshold_curves_png(tmp_path):
    path = tmp_path / "curves.png"
    assert save_png(threshold_figure(sweeps(), metric="Dice", images=50), path) == path
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 20_000
    image = cv2.imread(str(path))
    assert image.shape == (700, 1000, 3)  # figsize 10 x 7 at 100 dpi
    # Something was drawn: many distinct colours, the red marker and the blue curves among them.
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 100
    b, g, r = (image[..., i].astype(int) for i in range(3))
    assert ((r > 180) & (g < 80) & (b < 80)).sum() > 20  # tab:red markers
    assert ((b > 150) & (r < 80)).sum() > 500  # tab:blue steps
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary file left


def test_fewer_classes_and_probability_one(tmp_path):
    one = sweep(np.array([0.0, 1.0, 0.5]), np.array([0.2, 0.9, 0.1]), np.array([1.0, 0.0, 1.0]))
    path = save_png(threshold_figure({"Fish": one}, metric="accuracy"), tmp_path / "one.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
