"""train-seg and predict-seg on tiny synthetic data (CPU, random weights)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cloudpipe.cli import main
from cloudpipe.core.competition import CLASSES
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.kaggle import presence, read_mask_csv, read_train
from cloudpipe.data.outputs import output_lock
from cloudpipe.engine.checkpoint import load_checkpoint
from cloudpipe.engine.config import load_config
from cloudpipe.engine.train import make_splits, train_run
from cloudpipe.pipeline.segment import probability_store

SEG = dict(arch="tiny", weights="none", image_size=(32, 64), workers=0, batch_size=8, device="cpu")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def seg_run(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("seg") / "run"
    result = invoke("train-seg", "--data", tiny_data, "--out", run, "--epochs", 1, "--image-size", 32, 64,
                    "--arch", "tiny", "--weights", "none", "--workers", 0, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    return run


def test_train_seg_writes_run(seg_run):
    assert {"best.pt", "last.pt", "config.yaml", "metrics.csv"} <= {p.name for p in seg_run.iterdir()}
    metrics = pd.read_csv(seg_run / "metrics.csv")
    assert "val_dice" in metrics and 0 <= metrics["val_dice"].iloc[0] <= 1
    state = torch.load(seg_run / "best.pt", weights_only=True)
    assert state["config"]["task"] == "segmentation" and state["config"]["arch"] == "tiny"


def test_predict_seg_val_and_test(seg_run, tiny_data, tmp_path):
    val_csv, test_csv = tmp_path / "val.csv", tmp_path / "test.csv"
    result = invoke("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "val", "--out", val_csv,
                    "--workers", 0, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert "validation Dice" in result.output
    post = json.loads((seg_run / "seg_postprocess.json").read_text())
    assert post["format"] == 2 and [s["step"] for s in post["steps"]] == ["threshold", "min_size"]
    assert all(set(s["values"]) == set(CLASSES) for s in post["steps"])
    val = read_mask_csv(val_csv, shape=(350, 525))  # valid Kaggle format, every pair present
    classifier_val = make_splits(load_config("classifier"), presence(read_train(tiny_data)))[0][1]
    assert sorted(pd.unique(val["image"])) == sorted(classifier_val)  # the classifier's validation images
    recorded = pd.read_csv(seg_run / "splits.csv", dtype=str, keep_default_na=False)
    assert sorted(recorded.loc[recorded["fold"] == "0", "image"]) == sorted(classifier_val)
    result = invoke("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "test", "--out", test_csv,
                    "--workers", 0, "--device", "cpu", "--quiet", "--tta")
    assert result.exit_code == 0, result.output
    test = read_mask_csv(test_csv, shape=(350, 525))
    sample = pd.read_csv(tiny_data / "sample_submission.csv")
    assert list(test["Image_Label"]) == list(sample["Image_Label"])
    again = invoke("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "test", "--out", test_csv)
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    default = invoke("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "test", "--workers", 0, "--quiet")
    assert default.exit_code == 0, default.output
    assert read_mask_csv(seg_run / "test_seg.csv")["Image_Label"].tolist() == list(sample["Image_Label"])
    again = invoke("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "test", "--workers", 0, "--quiet",
                   "--overwrite")  # its own earlier output inside the run is not an input
    assert again.exit_code == 0, again.output


def test_predict_seg_refuses_a_classifier_run(tiny_classifier_run, tiny_data, tmp_path):
    result = invoke("predict-seg", "--run", tiny_classifier_run, "--data", tiny_data, "--split", "test",
                    "--out", tmp_path / "x.csv", "--workers", 0)
    assert result.exit_code == 2 and "needs a segmentation" in result.stderr
    assert not (tmp_path / "x.csv").exists()


def test_seg_resume_goes_through_the_shared_loop(tiny_data, tmp_path):
    cfg = lambda epochs: load_config("segmentation", overrides={**SEG, "epochs": epochs})  # noqa: E731
    train_run(cfg(2), tiny_data, tmp_path / "full", progress=False)
    train_run(cfg(1), tiny_data, tmp_path / "part", progress=False)
    train_run(cfg(2), tiny_data, tmp_path / "part", resume=True, progress=False)
    full, part = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    for key, value in full["model"].items():
        torch.testing.assert_close(part["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_bad_postprocess_file_fails_before_inference(seg_run, tiny_data, tmp_path, monkeypatch):
    import cloudpipe.pipeline.segment

    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    (run / "seg_postprocess.json").write_text("{not json")
    monkeypatch.setattr(cloudpipe.pipeline.segment, "stream_probs", lambda *a, **k: pytest.fail("inference ran"))
    result = invoke("predict-seg", "--run", run, "--data", tiny_data, "--split", "test", "--out", tmp_path / "t.csv",
                    "--workers", 0, "--device", "cpu")
    assert result.exit_code == 2 and "not a readable JSON file" in result.stderr
    assert not (tmp_path / "t.csv").exists()


KILLED_MID_RUN = """
import os, signal, sys
from pathlib import Path
from cloudpipe.pipeline.segment import probability_store
store = probability_store(Path(sys.argv[1]), (3, 4, 350, 525))
store[:] = 7
print(len(os.listdir(sys.argv[1])), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill_9_leaves_no_probability_store(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    child = subprocess.run([sys.executable, "-c", KILLED_MID_RUN, str(folder)], capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.strip() == "0"  # the 4 MB store already had no name while in use
    assert os.listdir(folder) == []


def test_full_disk_for_the_store_is_one_line(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(CloudpipeError, match="No space left on device") as info:
        probability_store(tmp_path, (600, 4, 350, 525))
    assert str(tmp_path) in str(info.value) and os.listdir(tmp_path) == []


@pytest.mark.parametrize("target", ["sample_submission.csv", "train.csv", "train_images/new.png", "run/best.pt",
                                    "run/seg_postprocess.json"])
def test_predict_seg_refuses_to_write_an_input(seg_run, tiny_data, tmp_path, target):
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(tiny_data, data)
    shutil.copytree(seg_run, run)
    out = tmp_path / target if target.startswith("run/") else data / target
    before = out.read_bytes() if out.exists() else None
    result = invoke("predict-seg", "--run", run, "--data", data, "--split", "test", "--out", out, "--overwrite",
                    "--workers", 0, "--device", "cpu", "--quiet")
    assert result.exit_code == 2, result.output
    assert "input" in result.stderr and result.stderr.count("\n") == 1
    assert (out.read_bytes() if out.exists() else None) == before


def test_predict_seg_second_writer_fails_at_once(seg_run, tiny_data, tmp_path, monkeypatch):
    import cloudpipe.pipeline.segment

    out = tmp_path / "test.csv"
    monkeypatch.setattr(cloudpipe.pipeline.segment, "stream_probs", lambda *a, **k: pytest.fail("inference ran"))
    with output_lock(out):
        result = invoke("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "test", "--out", out,
                        "--workers", 0, "--device", "cpu", "--quiet")
    assert result.exit_code == 2, result.output
    assert f"is being written by another cloudpipe process (pid {os.getpid()})" in result.stderr
    assert os.listdir(tmp_path) == []
