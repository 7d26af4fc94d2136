"""tune-seg and apply-seg: post-processing tuned and applied from stored probabilities alone,
the same masks and bytes as predict-seg, spread over forked processes."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import torch

from cloudpipe.data.beside import info_path
from cloudpipe.data.kaggle import read_mask_csv
from tests.conftest import CPU_QUIET, cli, copy_run, load


def test_val_store_retunes_to_the_same_masks(seg_run, tiny_data, tmp_path):
    run = copy_run(seg_run, tmp_path, "run")
    val = tmp_path / "val_seg.csv"
    assert cli("predict-seg", "--run", run, "--data", tiny_data, "--split", "val", "--out", val, *CPU_QUIET).exit_code == 0
    store, info = load(tmp_path / "val_seg_probs.npy")
    assert info.split == "val" and info.runs == [str(run.resolve())] and info.weights == [1.0]
    assert sorted(info.images) == sorted(pd.unique(read_mask_csv(val)["image"]))
    assert store.dtype == "uint8" and store.shape == (len(info.images), 4, 350, 525)
    again = tmp_path / "again.csv"
    result = cli("tune-seg", "--store", tmp_path / "val_seg_probs.npy", "--data", tiny_data, "--out", again)
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == val.read_bytes()
    tuned = json.loads((tmp_path / "again_postprocess.json").read_text())
    assert tuned["steps"] == json.loads((run / "seg_postprocess.json").read_text())["steps"]
    assert tuned["runs"] == [str(run.resolve())]


def test_tune_seg_tunes_the_steps_named(seg_run, tiny_data, tmp_path):
    run = copy_run(seg_run, tmp_path, "run")
    val = tmp_path / "val_seg.csv"
    assert cli("predict-seg", "--run", run, "--data", tiny_data, "--split", "val", "--out", val, *CPU_QUIET).exit_code == 0
    again = tmp_path / "again.csv"
    result = cli("tune-seg", "--store", tmp_path / "val_seg_probs.npy", "--data", tiny_data, "--out", again,
                    "--steps", "threshold,top_area,min_size,shape", "--choice", "robust")
    assert result.exit_code == 0, result.output
    tuned = json.loads((tmp_path / "again_postprocess.json").read_text())
    assert [s["step"] for s in tuned["steps"]] == ["threshold", "top_area", "min_size", "shape"]
    assert tuned["choice"] == "robust" and "(robust choice)" in result.output
    assert "shape" in result.output and "validation Dice" in result.output
    test = tmp_path / "test.csv"
    result = cli("predict-seg", "--run", run, "--data", tiny_data, "--split", "test", "--out", test,
                    "--postprocess", tmp_path / "again_postprocess.json", *CPU_QUIET)
    assert result.exit_code == 0, result.output  # the tuned steps apply to the test masks
    bad = cli("tune-seg", "--store", tmp_path / "val_seg_probs.npy", "--data", tiny_data, "--out", tmp_path / "b.csv",
                 "--steps", "shape,threshold")
    assert bad.exit_code == 2 and "reads the probabilities" in bad.stderr
    bad = cli("predict-seg", "--run", run, "--data", tiny_data, "--split", "test", "--out", tmp_path / "c.csv",
                 "--steps", "threshold")
    assert bad.exit_code == 2 and "--steps is tuned by --split val" in bad.stderr


def test_apply_seg_writes_the_bytes_predict_seg_writes(seg_run, seg_run_b, tiny_data, tmp_path):
    a, b = copy_run(seg_run, tmp_path, "a"), copy_run(seg_run_b, tmp_path, "b")
    for run in (a, b):
        for split in ("val", "test"):
            assert cli("predict-seg", "--run", run, "--data", tiny_data, "--split", split, "--overwrite", *CPU_QUIET).exit_code == 0
    # One run: its test store and its own post-processing give predict-seg's CSV.
    one = cli("apply-seg", "--store", a / "test_seg_probs.npy", "--postprocess", a / "seg_postprocess.json",
                 "--data", tiny_data, "--out", tmp_path / "one.csv")
    assert one.exit_code == 0, one.output
    assert (tmp_path / "one.csv").read_bytes() == (a / "test_seg.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "one.csv"]  # the CSV alone
    # An ensemble: tuned on the validation stores, applied to the test stores or to the ensemble's own test store.
    weights = ["--ensemble-weight", 1, "--ensemble-weight", 3]
    assert cli("tune-seg", "--store", a / "val_seg_probs.npy", "--store", b / "val_seg_probs.npy", *weights,
                  "--data", tiny_data, "--out", tmp_path / "ens_val.csv").exit_code == 0
    post = tmp_path / "ens_val_postprocess.json"
    result = cli("predict-seg", "--run", a, "--run", b, *weights, "--data", tiny_data, "--split", "test",
                    "--out", tmp_path / "ens_test.csv", "--postprocess", post, *CPU_QUIET)
    assert result.exit_code == 0, result.output
    stores = ["--store", a / "test_seg_probs.npy", "--store", b / "test_seg_probs.npy"]
    for given in ([*stores, *weights], ["--store", tmp_path / "ens_test_probs.npy"]):
        out = tmp_path / "applied.csv"
        result = cli("apply-seg", *given, "--postprocess", post, "--data", tiny_data, "--out", out, "--overwrite")
        assert result.exit_code == 0, result.output
        assert out.read_bytes() == (tmp_path / "ens_test.csv").read_bytes()
    # Refused, in one line, writing nothing: other runs or weights, a validation store, other images.
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other, symlinks=True)
    sample = pd.read_csv(other / "sample_submission.csv")
    sample.iloc[:-4].to_csv(other / "sample_submission.csv", index=False)
    own = a / "seg_postprocess.json"
    for args, tuned, data, message in (([*stores, "--ensemble-weight", 1, "--ensemble-weight", 1], post, tiny_data, "were tuned for runs"),
                                       (stores[:2], post, tiny_data, "were tuned for runs"),
                                       (["--store", a / "val_seg_probs.npy"], own, tiny_data, "holds val probabilities"),
                                       (stores[:2], own, other, "compared with the test images of"),
                                       (stores[:2], own, other, "; pass the store predict-seg --split test wrote with this --data")):
        bad = cli("apply-seg", *args, "--postprocess", tuned, "--data", data, "--out", tmp_path / "bad.csv")
        assert bad.exit_code == 2 and message in bad.stderr and bad.stderr.count("\n") == 1, (message, bad.output)
        assert not (tmp_path / "bad.csv").exists()


def test_tuning_spread_over_processes_is_the_same(seg_run, tiny_data, monkeypatch):
    """Images in tasks of one, on two forked processes: the same statistics as inline."""
    import cloudpipe.pipeline.parallel as parallel
    import cloudpipe.pipeline.seg_masks as seg_masks
    from cloudpipe.data.kaggle import load_train_data

    data = load_train_data(tiny_data)
    names = sorted(data.rles.index)[:5]
    rng = torch.Generator().manual_seed(0)
    blobs = torch.nn.functional.avg_pool2d(torch.rand((len(names) * 4, 1, 350, 525), generator=rng), 31, 1, 15)
    store = ((blobs - 0.4) * 1200).clamp(0, 255).to(torch.uint8).reshape(len(names), 4, 350, 525).numpy()
    monkeypatch.setattr(parallel, "ROWS_PER_TASK", 1)
    inline = seg_masks.postprocess_stats(store, names, data.rles, data.image_shape, processes=1)
    forked = seg_masks.postprocess_stats(store, names, data.rles, data.image_shape, processes=2)
    assert all((x == y).all() for x, y in zip(inline, forked)) and inline[1].any() and inline[2].any()


def test_bad_store_is_one_line_and_writes_nothing(seg_run, tiny_data, tmp_path):
    run = copy_run(seg_run, tmp_path, "run")
    assert cli("predict-seg", "--run", run, "--data", tiny_data, "--split", "val", *CPU_QUIET).exit_code == 0
    npy = run / "val_seg_probs.npy"
    with open(npy, "r+b") as f:
        f.truncate(npy.stat().st_size - 1)
    result = cli("tune-seg", "--store", npy, "--data", tiny_data, "--out", tmp_path / "re.csv")
    assert result.exit_code == 2 and "truncated" in result.stderr and result.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_tune_seg_says_per_class_why_the_defaults_were_kept(tiny_data, tmp_path):
    """Probabilities of 0.4 exactly on the truth: a threshold below 0.4 would be perfect, the
    default 0.5 blanks everything; on 8 images robust keeps the default and now says why."""
    import numpy as np

    from cloudpipe.core.masks import resize_nearest
    from cloudpipe.core.rle import rle2mask
    from cloudpipe.data.kaggle import read_train, to_wide
    from cloudpipe.data.probstore import StoreInfo, array_writer, info_writer
    from tests.conftest import CLASSES, SUBMISSION_SHAPE

    truth = to_wide(read_train(tiny_data))
    images = list(truth.index[:8])
    store = np.zeros((8, 4, *SUBMISSION_SHAPE), np.uint8)
    for i, image in enumerate(images):
        for k, c in enumerate(CLASSES):
            store[i, k] = resize_nearest(rle2mask(truth.loc[image, c], (64, 96)), SUBMISSION_SHAPE) * 102
    npy = tmp_path / "val_seg_probs.npy"
    array_writer(store)(npy)
    info_writer(StoreInfo.of("val", images, [], []))(info_path(npy))
    result = cli("tune-seg", "--store", npy, "--data", tiny_data, "--out", tmp_path / "val.csv", "--steps", "threshold")
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if line.split(":")[0] in CLASSES]
    assert len(said) >= 2, result.output  # the classes present in more than one of the 8 images
    for line in said:
        assert ": kept the default (threshold 0.5) over threshold 0.3 (in-sample gain +0." in line
        assert line.endswith("too few images to check it on held-out ones (8 < 10)"), line


def test_masks_csv_is_in_the_profiles_submission_layout(tmp_path):
    """Under steel, the masks CSV predict-seg, tune-seg and apply-seg write is Severstal's submission
    (read here by the test's own reader), each mask the post-processed probabilities."""
    import numpy as np

    from cloudpipe.algorithms.postprocess import PostProcess
    from cloudpipe.core.profile import packaged, use_profile
    from cloudpipe.pipeline.seg_masks import masks_writer
    from tests.test_kaggle import read_severstal_submission

    names = ["0000f269f.jpg", "000ccc2ac.jpg"]
    store = np.zeros((2, 4, 256, 1600), np.uint8)
    store[0, 1, 10:60, 100:400] = 250
    store[1, 3, 200:256, 1500:1600] = 240
    store[1, 0, 0:5, 0:3] = 200
    with use_profile(packaged("steel")):
        post = PostProcess()
        masks_writer(names, store, post, processes=1)(tmp_path / "masks.csv")
        expected = {(n, k + 1): post.apply(store[i, k], k) for i, n in enumerate(names) for k in range(4)}
    read = read_severstal_submission(tmp_path / "masks.csv")
    assert list(read) == list(expected)
    assert all((read[key] == expected[key]).all() for key in expected)
    assert sum(int(m.any()) for m in read.values()) == 3  # not vacuous: three masks drawn, five empty
