"""Shared fixtures: tiny synthetic datasets in the Kaggle layout, made by cloudpipe.synth.

The torch hub cache points at an empty temporary folder, so no test can download weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudpipe.synth import make_dataset

TINY_SHAPE = (64, 96)


@pytest.fixture(autouse=True)
def _no_downloads(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """24 train and 6 test images of 64 x 96 (read-only: copy before changing)."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    make_dataset(out, train=24, test=6, shape=TINY_SHAPE, seed=3, progress=False)
    return out
