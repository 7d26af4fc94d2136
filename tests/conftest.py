"""What the tests share: tiny synthetic datasets in the Kaggle layout (cloudpipe.data.synth),
tiny configs and runs (:func:`tiny_config`, :func:`train_tiny`), the command line (:func:`cli`)
and probability stores (:func:`write_store`).

The torch hub cache points at an empty temporary folder, so no test can download weights.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cloudpipe.core.masks import resize_nearest
from cloudpipe.core.profile import join_label, packaged
from cloudpipe.core.rle import mask2rle, rle2mask
from cloudpipe.data.beside import info_path
from cloudpipe.data.kaggle import read_train, to_wide
from cloudpipe.data.synth import make_dataset

CLOUDS = packaged("clouds")
CLASSES, SUBMISSION_SHAPE = CLOUDS.classes, CLOUDS.submission_size
"""The default profile's facts, which most tests' data (``make_dataset``'s) has."""

TINY_SHAPE = (64, 96)
TINY = dict(arch="tiny", weights="none", epochs=1, image_size=TINY_SHAPE, workers=0, batch_size=8, accumulate=1, lr=1e-3,
            device="cpu")
"""A run of the tiny stand-in model, one epoch on the CPU: the base of every test's config."""


def tiny_config(task: str = "classifier", **overrides):
    """The resolved config of a tiny run of ``task``, with ``overrides``."""
    from cloudpipe.engine.config import load_config

    return load_config(task, overrides={**TINY, **overrides})


def train_tiny(data: Path, run: Path, task: str = "classifier", **overrides) -> Path:
    """Train a tiny run (:func:`tiny_config`) on ``data`` into ``run``."""
    from cloudpipe.engine.train import train_run

    train_run(tiny_config(task, **overrides), data, run, progress=False)
    return run


def cli(*args):
    """``cloudpipe ARGS...`` in-process (click's runner); the result (exit code, output)."""
    from click.testing import CliRunner

    from cloudpipe.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _no_downloads(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """24 train and 6 test images of 64 x 96 (read-only: copy before changing)."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    make_dataset(out, train=24, test=6, shape=TINY_SHAPE, seed=3, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_classifier_run(tiny_data, tmp_path_factory) -> Path:
    """A classifier trained for one epoch on ``tiny_data`` (random init, CPU)."""
    return train_tiny(tiny_data, tmp_path_factory.mktemp("classifier") / "run")


@pytest.fixture()
def dead_pid() -> int:
    """The pid of a process that has exited, as a lock left by a writer killed with -9 holds."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _noisy_segmentation(data_dir: Path, images: list[str], seed: int = 0) -> pd.DataFrame:
    """Segmentation 'predictions' at the submission size: truth, shifted, plus false-positive
    blocks in some absent classes."""
    rng = np.random.default_rng(seed)
    truth = to_wide(read_train(data_dir))
    image_shape = (64, 96)
    rows = []
    for image in images:
        for c in CLASSES:
            mask = resize_nearest(rle2mask(truth.loc[image, c], image_shape), SUBMISSION_SHAPE)
            mask = np.roll(mask, int(rng.integers(-30, 30)), axis=1)
            if not mask.any() and rng.random() < 0.7:
                top, left = int(rng.integers(0, 250)), int(rng.integers(0, 400))
                mask = np.zeros(SUBMISSION_SHAPE, np.uint8)
                mask[top:top + 100, left:left + 120] = 1
            rows.append((join_label(image, c), mask2rle(mask)))
    return pd.DataFrame(rows, columns=["Image_Label", "EncodedPixels"])


@pytest.fixture(scope="session")
def noisy_segmentation():
    """A maker of segmentation 'predictions' for images of a tiny dataset (see its docstring)."""
    return _noisy_segmentation


@pytest.fixture(scope="session")
def tiny_classifier_run_b(tiny_data, tmp_path_factory) -> Path:
    """A second classifier on the same split as ``tiny_classifier_run``, at another image size."""
    return train_tiny(tiny_data, tmp_path_factory.mktemp("classifier_b") / "run", image_size=(32, 64))


def write_store(path: Path, images: list[str], split: str, seed: int = 0) -> Path:
    """A probability store of random blocks for ``images`` (as predict-seg writes one)."""
    from cloudpipe.data.probstore import StoreInfo, array_writer, info_writer

    rng = np.random.default_rng(seed)
    store = (rng.random((len(images), len(CLASSES), *SUBMISSION_SHAPE)) * 90).astype(np.uint8)
    for i in range(len(images)):
        for k in range(len(CLASSES)):
            if rng.random() < 0.6:
                top, left = int(rng.integers(0, 250)), int(rng.integers(0, 400))
                store[i, k, top:top + 100, left:left + 120] = int(rng.integers(120, 255))
    array_writer(store)(path)
    info_writer(StoreInfo.of(split, list(images), [], []))(info_path(path))
    return path


def pytest_collection_modifyitems(items):
    """Every test that starts a torchrun job is slow (see pyproject's markers)."""
    for item in items:
        if "torchrun" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture()
def torchrun():
    """Run ``python -m cloudpipe ARGS...`` as two CPU ranks under torchrun (gloo); the
    completed process."""
    import os

    def run(*args, nproc: int = 2) -> subprocess.CompletedProcess:
        repo = str(Path(__file__).resolve().parents[1])  # this checkout's cloudpipe, not an installed one
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([repo, *filter(None, [os.environ.get("PYTHONPATH")])])}
        # --standalone: the rendezvous binds a port of the system's choosing itself, so no other
        # process can take it between our choice and torchrun's bind
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "--", "cloudpipe", *map(str, args)]  # "--": else torchrun reads an option such as --run as its own
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    return run


CPU_QUIET = ("--workers", 0, "--device", "cpu", "--quiet")
"""The options that keep a command on the CPU, inline and silent."""


@pytest.fixture(scope="session")
def seg_run(tiny_data, tmp_path_factory):
    """A tiny segmentation run (no head), trained once for the session by the command itself."""
    run = tmp_path_factory.mktemp("seg") / "run"
    result = cli("train-seg", "--data", tiny_data, "--out", run, "--epochs", 1, "--image-size", 32, 64,
                    "--arch", "tiny", "--weights", "none", "--workers", 0, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="session")
def seg_run_b(tiny_data, tmp_path_factory):
    """A second run on the same split, at another image size."""
    run = tmp_path_factory.mktemp("seg_b") / "run"
    result = cli("train-seg", "--data", tiny_data, "--out", run, "--epochs", 1, "--image-size", 64, 96,
                    "--arch", "tiny", "--weights", "none", *CPU_QUIET)
    assert result.exit_code == 0, result.output
    return run


def copy_run(run, tmp_path, name):
    """A copy of a session run that a test may change."""
    shutil.copytree(run, tmp_path / name)
    return tmp_path / name


def load(npy):
    """A probability store and its info (:func:`~cloudpipe.data.probstore.read_store`)."""
    from cloudpipe.data.probstore import read_store

    return read_store(npy)


def finished_meanwhile(monkeypatch, out: Path, made_by: str, name: str) -> None:
    """Make the next command's claim find ``out`` as another ``made_by`` command left it, having
    finished between this one's start and its lock (``out/name`` holds ``the other's``)."""
    from cloudpipe.engine.runner import Runner

    claim = Runner.claim

    def the_other_finishes_first(self, declare):
        out.mkdir()
        (out / ".cloudpipe").write_text(f"cloudpipe {made_by}\n")
        (out / name).write_text("the other's")
        return claim(self, declare)

    monkeypatch.setattr(Runner, "claim", the_other_finishes_first)
