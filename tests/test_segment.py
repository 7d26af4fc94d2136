"""train-seg and predict-seg on tiny synthetic data (CPU, random weights)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cloudpipe.checkpoint import load_checkpoint
from cloudpipe.cli import main
from cloudpipe.competition import CLASSES
from cloudpipe.config import load_config
from cloudpipe.data import presence, read_mask_csv, read_train
from cloudpipe.masks import remove_small_components
from cloudpipe.segment import MIN_SIZE_GRID, THRESHOLD_GRID, PostProcess, binarize, choose_postprocess, sweep_stats
from cloudpipe.train import make_splits, train_run

SEG = dict(weights="none", image_size=(32, 64), workers=0, batch_size=8, device="cpu", encoder="resnet18")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def seg_run(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("seg") / "run"
    result = invoke("train-seg", "--data", tiny_data, "--out", run, "--epochs", 1, "--image-size", 32, 64,
                    "--encoder", "resnet18", "--weights", "none", "--workers", 0, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    return run


def test_train_seg_writes_run(seg_run):
    assert {"best.pt", "last.pt", "config.yaml", "metrics.csv"} <= {p.name for p in seg_run.iterdir()}
    metrics = pd.read_csv(seg_run / "metrics.csv")
    assert "val_dice" in metrics and 0 <= metrics["val_dice"].iloc[0] <= 1
    state = torch.load(seg_run / "best.pt", weights_only=True)
    assert state["config"]["task"] == "segmentation" and state["config"]["arch"] == "Unet"


def test_predict_seg_val_and_test(seg_run, tiny_data, tmp_path):
    val_csv, test_csv = tmp_path / "val.csv", tmp_path / "test.csv"
    result = invoke("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "val", "--out", val_csv,
                    "--workers", 0, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert "validation Dice" in result.output
    post = json.loads((seg_run / "seg_postprocess.json").read_text())
    assert set(post["threshold"]) == set(CLASSES) and set(post["min_size"]) == set(CLASSES)
    val = read_mask_csv(val_csv, shape=(350, 525))  # valid Kaggle format, every pair present
    classifier_val = make_splits(load_config("classifier"), presence(read_train(tiny_data)))[0][1]
    assert sorted(pd.unique(val["image"])) == sorted(classifier_val)  # the classifier's validation images
    result = invoke("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "test", "--out", test_csv,
                    "--workers", 0, "--device", "cpu", "--quiet", "--tta")
    assert result.exit_code == 0, result.output
    test = read_mask_csv(test_csv, shape=(350, 525))
    sample = pd.read_csv(tiny_data / "sample_submission.csv")
    assert list(test["Image_Label"]) == list(sample["Image_Label"])
    again = invoke("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "test", "--out", test_csv)
    assert again.exit_code == 2 and "--overwrite" in again.stderr


def test_predict_seg_refuses_a_classifier_run(tiny_classifier_run, tiny_data, tmp_path):
    result = invoke("predict-seg", "--run", tiny_classifier_run, "--data", tiny_data, "--split", "test",
                    "--out", tmp_path / "x.csv", "--workers", 0)
    assert result.exit_code == 2 and "needs a segmentation" in result.stderr
    assert not (tmp_path / "x.csv").exists()


def test_postprocess_removes_small_components():
    probs = np.zeros((20, 30), np.uint8)
    probs[2:4, 2:4] = 200  # 4 pixels
    probs[10:18, 10:20] = 200  # 80 pixels
    probs[0, 29] = 100  # below threshold 0.5 (127.5)
    post = PostProcess({c: 0.5 for c in CLASSES}, {c: 5 for c in CLASSES})
    mask = post.apply(probs, 0)
    assert mask.sum() == 80 and mask[2:4, 2:4].sum() == 0
    assert PostProcess.default().apply(probs, 0).sum() == 84


def test_sweep_stats_match_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(10):
        probs = (rng.random((35, 52)) * 255).astype(np.uint8)
        probs[5:25, 10:40] = np.clip(probs[5:25, 10:40].astype(int) + 120, 0, 255).astype(np.uint8)
        truth = np.zeros((35, 52), np.uint8)
        truth[8:30, 12:45] = 1
        sizes = (0, 3, 20, 300)
        inter, area = sweep_stats(probs, truth, THRESHOLD_GRID, sizes)
        for ti, t in enumerate(THRESHOLD_GRID):
            for mi, m in enumerate(sizes):
                mask = remove_small_components(binarize(probs, t), m).astype(bool)
                assert inter[ti, mi] == np.count_nonzero(mask & truth.astype(bool))
                assert area[ti, mi] == np.count_nonzero(mask)


def test_choose_postprocess_picks_best_mean_dice_first_on_ties():
    n, t, m = 3, len(THRESHOLD_GRID), len(MIN_SIZE_GRID)
    inter = np.zeros((n, 4, t, m), np.int64)
    area = np.full((n, 4, t, m), 10, np.int64)
    truth = np.full((n, 4), 10, np.int64)
    inter[:, 1, 2, 3] = 10  # Flower perfect at threshold index 2, min size index 3
    post, dice = choose_postprocess(inter, area, truth)
    assert post.threshold["Flower"] == THRESHOLD_GRID[2] and post.min_size["Flower"] == MIN_SIZE_GRID[3]
    assert dice[1, 2, 3] == 1.0
    assert post.threshold["Fish"] == THRESHOLD_GRID[0] and post.min_size["Fish"] == MIN_SIZE_GRID[0]  # all tie


def test_seg_resume_goes_through_the_shared_loop(tiny_data, tmp_path):
    cfg = lambda epochs: load_config("segmentation", overrides={**SEG, "epochs": epochs})  # noqa: E731
    train_run(cfg(2), tiny_data, tmp_path / "full", progress=False)
    train_run(cfg(1), tiny_data, tmp_path / "part", progress=False)
    train_run(cfg(2), tiny_data, tmp_path / "part", resume=True, progress=False)
    full, part = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    for key, value in full["model"].items():
        torch.testing.assert_close(part["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_bad_postprocess_file_fails_before_inference(seg_run, tiny_data, tmp_path, monkeypatch):
    import shutil

    import cloudpipe.segment

    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    (run / "seg_postprocess.json").write_text("{not json")
    monkeypatch.setattr(cloudpipe.segment, "stream_probs", lambda *a, **k: pytest.fail("inference ran"))
    result = invoke("predict-seg", "--run", run, "--data", tiny_data, "--split", "test", "--out", tmp_path / "t.csv",
                    "--workers", 0, "--device", "cpu")
    assert result.exit_code == 2 and "not a valid post-processing file" in result.stderr
    assert not (tmp_path / "t.csv").exists()
