"""train-seg and predict-seg on tiny synthetic data (CPU, random weights), in one process and under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch

from cloudpipe.data.beside import postprocess_path_for, presence_path, store_paths
from cloudpipe.data.kaggle import presence, read_mask_csv, read_train
from cloudpipe.data.outputs import output_lock
from cloudpipe.engine.checkpoint import load_checkpoint
from cloudpipe.engine.config import load_config
from cloudpipe.engine.train import make_splits, train_run
from tests.conftest import CLASSES, CPU_QUIET, TINY, cli, copy_run, load

SEG = {**TINY, "image_size": (32, 64), "head_weight": 0.0}
"""conftest's tiny run at the session seg runs' size, without a head."""




def test_train_seg_writes_run(seg_run):
    assert {"best.pt", "last.pt", "config.yaml", "metrics.csv"} <= {p.name for p in seg_run.iterdir()}
    metrics = pd.read_csv(seg_run / "metrics.csv")
    assert "val_dice" in metrics and 0 <= metrics["val_dice"].iloc[0] <= 1
    state = torch.load(seg_run / "best.pt", weights_only=True)
    assert state["config"]["task"] == "segmentation" and state["config"]["arch"] == "tiny"


def test_predict_seg_val_and_test(seg_run, tiny_data, tmp_path):
    val_csv, test_csv = tmp_path / "val.csv", tmp_path / "test.csv"
    result = cli("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "val", "--out", val_csv,
                    "--workers", 0, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert "validation Dice" in result.output
    post = json.loads((seg_run / "seg_postprocess.json").read_text())
    assert post["format"] == 2 and [s["step"] for s in post["steps"]] == ["threshold", "min_size", "shape"]
    assert all(set(s["values"]) == set(CLASSES) for s in post["steps"])
    val = read_mask_csv(val_csv, shape=(350, 525))  # valid Kaggle format, every pair present
    classifier_val = make_splits(load_config("classifier"), presence(read_train(tiny_data)))[0][1]
    assert sorted(pd.unique(val["image"])) == sorted(classifier_val)  # the classifier's validation images
    recorded = pd.read_csv(seg_run / "splits.csv", dtype=str, keep_default_na=False)
    assert sorted(recorded.loc[recorded["fold"] == "0", "image"]) == sorted(classifier_val)
    result = cli("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "test", "--out", test_csv,
                    "--workers", 0, "--device", "cpu", "--quiet", "--tta")
    assert result.exit_code == 0, result.output
    test = read_mask_csv(test_csv, shape=(350, 525))
    sample = pd.read_csv(tiny_data / "sample_submission.csv")
    assert list(test["Image_Label"]) == list(sample["Image_Label"])
    again = cli("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "test", "--out", test_csv)
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    default = cli("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "test", "--workers", 0, "--quiet")
    assert default.exit_code == 0, default.output
    assert read_mask_csv(seg_run / "test_seg.csv")["Image_Label"].tolist() == list(sample["Image_Label"])
    again = cli("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "test", "--workers", 0, "--quiet",
                   "--overwrite")  # its own earlier output inside the run is not an input
    assert again.exit_code == 0, again.output
    for path in store_paths(seg_run / "test_seg.csv"):
        path.unlink()  # a CSV written before stores existed is replaced too
    again = cli("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "test", "--workers", 0, "--quiet",
                   "--overwrite")
    assert again.exit_code == 0, again.output


def test_predict_seg_refuses_a_classifier_run(tiny_classifier_run, tiny_data, tmp_path):
    result = cli("predict-seg", "--run", tiny_classifier_run, "--data", tiny_data, "--split", "test",
                    "--out", tmp_path / "x.csv", "--workers", 0)
    assert result.exit_code == 2 and "needs a segmentation" in result.stderr
    assert not (tmp_path / "x.csv").exists()


def test_seg_resume_goes_through_the_shared_loop(tiny_data, tmp_path):
    cfg = lambda epochs: load_config("segmentation", overrides={**SEG, "epochs": epochs, "schedule": "plateau"})  # noqa: E731  (a longer resume: per-epoch schedules only)
    train_run(cfg(2), tiny_data, tmp_path / "full", progress=False)
    train_run(cfg(1), tiny_data, tmp_path / "part", progress=False)
    train_run(cfg(2), tiny_data, tmp_path / "part", resume=True, progress=False)
    full, part = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    for key, value in full["model"].items():
        torch.testing.assert_close(part["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_seg_head_trains_rebuilds_writes_presence_and_resumes(tiny_data, tmp_path):
    head = {**SEG, "head_weight": 0.5}
    cfg = lambda epochs: load_config("segmentation", overrides={**head, "epochs": epochs, "schedule": "plateau"})  # noqa: E731
    train_run(cfg(2), tiny_data, tmp_path / "full", progress=False)
    train_run(cfg(1), tiny_data, tmp_path / "part", progress=False)
    train_run(cfg(2), tiny_data, tmp_path / "part", resume=True, progress=False)
    full, part = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    assert any("classification_head" in key for key in full["model"])
    for key, value in full["model"].items():
        torch.testing.assert_close(part["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    metrics = pd.read_csv(tmp_path / "full" / "metrics.csv")
    assert {"val_dice", "val_head_accuracy"} <= set(metrics) and metrics["val_head_accuracy"].between(0, 1).all()
    val = tmp_path / "val.csv"
    result = cli("predict-seg", "--run", tmp_path / "full", "--data", tiny_data, "--split", "val", "--out", val, *CPU_QUIET)
    assert result.exit_code == 0, result.output  # the checkpoint rebuilds with its head
    from cloudpipe.data.kaggle import read_probs_csv

    presence = read_probs_csv(tmp_path / "val_presence.csv")
    assert sorted(presence.index) == sorted(pd.unique(read_mask_csv(val)["image"])) and list(presence.columns) == list(CLASSES)
    result = cli("predict-seg", "--run", tmp_path / "full", "--data", tiny_data, "--split", "test", "--out",
                    tmp_path / "test.csv", "--tta", *CPU_QUIET)
    assert result.exit_code == 0, result.output
    assert len(read_probs_csv(tmp_path / "test_presence.csv")) == len(list((tiny_data / "test_images").iterdir()))
    assert not (tmp_path / "full" / "val_seg_presence.csv").exists()
    plain = tmp_path / "plain.csv"
    train_run(load_config("segmentation", overrides={**SEG, "epochs": 1}), tiny_data, tmp_path / "plain", progress=False)
    assert cli("predict-seg", "--run", tmp_path / "plain", "--data", tiny_data, "--split", "val", "--out", plain,
                  *CPU_QUIET).exit_code == 0
    assert not (tmp_path / "plain_presence.csv").exists()  # no head, no presence file


def test_bad_postprocess_file_fails_before_inference(seg_run, tiny_data, tmp_path, monkeypatch):
    import cloudpipe.engine.infer

    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    (run / "seg_postprocess.json").write_text("{not json")
    monkeypatch.setattr(cloudpipe.engine.infer, "stream_probs", lambda *a, **k: pytest.fail("inference ran"))
    result = cli("predict-seg", "--run", run, "--data", tiny_data, "--split", "test", "--out", tmp_path / "t.csv",
                    "--workers", 0, "--device", "cpu")
    assert result.exit_code == 2 and "not a readable JSON file" in result.stderr
    assert not (tmp_path / "t.csv").exists()


KILLED_WHILE_WRITING = """
import os, signal, sys
import cloudpipe.data.probstore
from cloudpipe.cli import main
real = cloudpipe.data.probstore.array_writer
def dying(store):
    def write(path):
        real(store[:2])(path)  # part of the store written to its temporary, then kill -9
        os.kill(os.getpid(), signal.SIGKILL)
    return write
cloudpipe.data.probstore.array_writer = dying
import cloudpipe.pipeline.sources.pixels  # the store's producer
cloudpipe.pipeline.sources.pixels.array_writer = dying
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_the_next_run_removes_what_a_kill_9_in_the_write_phase_left(seg_run, tiny_data, tmp_path):
    out = tmp_path / "out" / "val.csv"
    run = copy_run(seg_run, tmp_path, "run")
    args = ["predict-seg", "--run", run, "--data", tiny_data, "--split", "val", "--out", out, *CPU_QUIET]
    child = subprocess.run([sys.executable, "-c", KILLED_WHILE_WRITING, *map(str, args)], capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    left = sorted(p.name for p in out.parent.iterdir())
    assert any(name.endswith(".tmp") for name in left), left  # what kill -9 leaves: no cleanup runs
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["val.csv", "val_presence.csv", "val_probs.json", "val_probs.npy"]
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("target", ["sample_submission.csv", "train.csv", "train_images/new.png", "run/best.pt",
                                    "run/last.pt", "run/seg_postprocess.json", "run/metrics.csv", "run/splits.csv"])
def test_predict_seg_refuses_to_write_an_input(seg_run, tiny_data, tmp_path, target):
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(tiny_data, data)
    shutil.copytree(seg_run, run)
    out = tmp_path / target if target.startswith("run/") else data / target
    before = out.read_bytes() if out.exists() else None
    result = cli("predict-seg", "--run", run, "--data", data, "--split", "test", "--out", out, "--overwrite",
                    "--workers", 0, "--device", "cpu", "--quiet")
    assert result.exit_code == 2, result.output
    assert "input" in result.stderr and result.stderr.count("\n") == 1
    assert (out.read_bytes() if out.exists() else None) == before


def test_predict_seg_second_writer_fails_at_once(seg_run, tiny_data, tmp_path, monkeypatch):
    import cloudpipe.engine.infer

    out = tmp_path / "test.csv"
    monkeypatch.setattr(cloudpipe.engine.infer, "stream_probs", lambda *a, **k: pytest.fail("inference ran"))
    with output_lock(out):
        result = cli("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "test", "--out", out,
                        "--workers", 0, "--device", "cpu", "--quiet")
    assert result.exit_code == 2, result.output
    assert f"is being written by another cloudpipe process (pid {os.getpid()})" in result.stderr
    assert os.listdir(tmp_path) == []


def test_predict_seg_val_waits_for_no_one_writing_the_runs_postprocessing(seg_run, tiny_data, tmp_path, monkeypatch):
    """Two --split val runs of one model into different CSVs would both write
    RUN/seg_postprocess.json: the second fails at once, before any inference."""
    import cloudpipe.engine.infer

    monkeypatch.setattr(cloudpipe.engine.infer, "stream_probs", lambda *a, **k: pytest.fail("inference ran"))
    with output_lock(seg_run / "seg_postprocess.json"):
        result = cli("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "val", "--out",
                        tmp_path / "val.csv", "--workers", 0, "--device", "cpu", "--quiet")
    assert result.exit_code == 2, result.output
    assert "seg_postprocess.json" in result.stderr and "is being written by another cloudpipe process" in result.stderr
    assert os.listdir(tmp_path) == []




def test_ensemble_is_the_weighted_mean_of_the_runs_stores(seg_run, seg_run_b, tiny_data, tmp_path):
    a, b = copy_run(seg_run, tmp_path, "a"), copy_run(seg_run_b, tmp_path, "b")
    for split in ("val", "test"):
        for run in (a, b):
            result = cli("predict-seg", "--run", run, "--data", tiny_data, "--split", split, "--overwrite", *CPU_QUIET)
            assert result.exit_code == 0, result.output
    ens = tmp_path / "ens_val.csv"
    result = cli("predict-seg", "--run", a, "--run", b, "--ensemble-weight", 1, "--ensemble-weight", 3, "--data", tiny_data,
                    "--split", "val", "--out", ens, *CPU_QUIET)
    assert result.exit_code == 0, result.output
    (sa, ia), (sb, ib), (se, ie) = load(a / "val_seg_probs.npy"), load(b / "val_seg_probs.npy"), load(tmp_path / "ens_val_probs.npy")
    assert ia.images == ib.images == ie.images and ie.weights == [0.25, 0.75]
    expected = ((sa.astype("float64") + 3.0 * sb) / 4).round().astype("uint8")  # quarters: exact
    assert (se == expected).all()
    assert not (se == sa).all()  # the two runs differ: the mean is not one of them
    post = tmp_path / "ens_val_postprocess.json"
    assert json.loads(post.read_text())["runs"] == [str(a.resolve()), str(b.resolve())]
    # The same ensemble from the stores alone tunes to the same masks.
    result = cli("tune-seg", "--store", a / "val_seg_probs.npy", "--store", b / "val_seg_probs.npy",
                    "--ensemble-weight", 1, "--ensemble-weight", 3, "--data", tiny_data, "--out", tmp_path / "re.csv")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "re.csv").read_bytes() == ens.read_bytes()
    # Test masks: the ensemble needs its own post-processing file, for these runs and weights.
    test = ["predict-seg", "--run", a, "--run", b, "--ensemble-weight", 1, "--ensemble-weight", 3, "--data", tiny_data, "--split", "test"]
    refused = cli(*test, "--out", tmp_path / "t.csv", *CPU_QUIET)
    assert refused.exit_code == 2 and "--postprocess" in refused.stderr
    wrong = cli(*test, "--out", tmp_path / "t.csv", "--postprocess", a / "seg_postprocess.json", *CPU_QUIET)
    assert wrong.exit_code == 2 and "were tuned for runs" in wrong.stderr and wrong.stderr.count("\n") == 1
    other_weights = cli(*test[:5], "--data", tiny_data, "--split", "test", "--out", tmp_path / "t.csv",
                           "--postprocess", post, *CPU_QUIET)
    assert other_weights.exit_code == 2 and "were tuned for runs" in other_weights.stderr
    assert not (tmp_path / "t.csv").exists() and not (tmp_path / "t_probs.npy").exists()
    result = cli(*test, "--out", tmp_path / "t.csv", "--postprocess", post, *CPU_QUIET)
    assert result.exit_code == 0, result.output
    (ta, _), (tb, _), (te, info) = load(a / "test_seg_probs.npy"), load(b / "test_seg_probs.npy"), load(tmp_path / "t_probs.npy")
    assert info.split == "test" and (te == ((ta.astype("float64") + 3.0 * tb) / 4).round().astype("uint8")).all()
    sample = pd.read_csv(tiny_data / "sample_submission.csv")
    assert read_mask_csv(tmp_path / "t.csv")["Image_Label"].tolist() == list(sample["Image_Label"])


def test_runs_of_other_validation_images_are_refused(seg_run, tiny_data, tmp_path):
    folds = tmp_path / "folds"
    result = cli("train-seg", "--data", tiny_data, "--out", folds, "--epochs", 1, "--image-size", 32, 64, "--folds", 2,
                    "--arch", "tiny", "--weights", "none", *CPU_QUIET)
    assert result.exit_code == 0, result.output
    result = cli("predict-seg", "--run", seg_run, "--run", folds, "--data", tiny_data, "--split", "val",
                    "--out", tmp_path / "v.csv", *CPU_QUIET)
    assert result.exit_code == 2 and "validates on other images" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "v.csv").exists()


def cli_on_one_thread(*args):
    """:func:`cli` with torch on one thread, as each torchrun rank runs: fp32 sums taken in
    another order (more threads, or another batch shape: hence batches of one below) may round
    a pixel's probability apart."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cli(*args)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("split", ["test", "val"])
def test_predict_seg_under_torchrun_matches_one_process(seg_run, tiny_data, tmp_path, torchrun, split):
    from cloudpipe.algorithms.postprocess import PostProcess

    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    (run / "seg_postprocess.json").write_text(json.dumps(PostProcess().to_dict()))  # the steps' defaults (val re-tunes it)
    one, two = tmp_path / "one" / "seg.csv", tmp_path / "two" / "seg.csv"
    common = ("predict-seg", "--run", run, "--data", tiny_data, "--split", split, "--workers", 0, "--device", "cpu",
              "--batch-size", 1, "--quiet")  # batches of one: fp32 kernels may round apart by batch shape
    result = cli_on_one_thread(*common, "--out", one)
    assert result.exit_code == 0, result.output
    post = (run / "seg_postprocess.json").read_bytes()  # as the first command left it: the second must write the same
    proc = torchrun(*common, "--out", two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone reports
    files = [one, *store_paths(one), presence_path(one)]
    assert all(p.exists() for p in files[:3])
    for a, b in zip(files, [two, *store_paths(two), presence_path(two)]):
        assert a.exists() == b.exists() and (not a.exists() or a.read_bytes() == b.read_bytes()), b.name
    assert sorted(p.name for p in two.parent.iterdir()) == sorted(p.name for p in one.parent.iterdir())  # no shares left
    assert (run / "seg_postprocess.json").read_bytes() == post


def test_predict_seg_under_torchrun_refuses_an_existing_output_in_one_line_per_rank(seg_run, tiny_data, tmp_path,
                                                                                     torchrun):
    out = tmp_path / "seg.csv"
    out.write_text("old\n")
    proc = torchrun("predict-seg", "--run", seg_run, "--data", tiny_data, "--split", "test", "--out", out,
                    "--workers", 0, "--device", "cpu", "--quiet")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {out}: already exists; pass --overwrite to replace it"], proc.stderr[-3000:]  # rank 0's
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["seg.csv"]


def test_a_bad_image_in_one_ranks_share_is_one_line_from_rank_0(seg_run, tiny_data, tmp_path, torchrun):
    from cloudpipe.algorithms.postprocess import PostProcess
    from cloudpipe.data.kaggle import list_test_images

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    bad = data / "test_images" / list_test_images(data)[1]  # rank 1's share: images 1, 3, 5
    image = bad.read_bytes()
    bad.write_bytes(image[:len(image) // 2] + image[len(image) // 2 + 200:])  # well framed, corrupt inside
    run = copy_run(seg_run, tmp_path, "run")
    (run / "seg_postprocess.json").write_text(json.dumps(PostProcess().to_dict()))  # the steps' defaults
    out = tmp_path / "out" / "seg.csv"
    proc = torchrun("predict-seg", "--run", run, "--data", data, "--split", "test", "--out", out, *CPU_QUIET)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "corrupt JPEG" in errors[0] and str(bad) in errors[0], proc.stderr[-3000:]
    assert "Connection closed" not in proc.stderr and "CloudpipeError" not in proc.stderr  # no rank's traceback
    assert not out.parent.exists()  # nothing left: no share, no temporary, no empty folder


def test_predict_seg_ensemble_under_torchrun_matches_one_process(seg_run, seg_run_b, tiny_data, tmp_path, torchrun):

    one, two = tmp_path / "one" / "ens.csv", tmp_path / "two" / "ens.csv"
    common = ("predict-seg", "--run", seg_run, "--run", seg_run_b, "--ensemble-weight", 1, "--ensemble-weight", 3, "--data", tiny_data,
              "--split", "val", "--batch-size", 1, *CPU_QUIET)  # batches of one, as above
    result = cli_on_one_thread(*common, "--out", one)
    assert result.exit_code == 0, result.output
    proc = torchrun(*common, "--out", two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for a, b in zip([one, *store_paths(one)], [two, *store_paths(two)]):
        assert a.read_bytes() == b.read_bytes(), b.name
    [a, b] = [json.loads(postprocess_path_for(p).read_text()) for p in (one, two)]
    assert a == b
    assert sorted(p.name for p in two.parent.iterdir()) == sorted(p.name for p in one.parent.iterdir())


# --- a tuned file follows what its runs are, not where they lie -----------------------------------


def test_tuned_files_follow_a_moved_run_and_refuse_another_run_in_its_place(seg_run, seg_run_b, tiny_data, tmp_path):
    a = copy_run(seg_run, tmp_path, "a")
    val = tmp_path / "val.csv"
    assert cli("predict-seg", "--run", a, "--data", tiny_data, "--split", "val", "--out", val, *CPU_QUIET).exit_code == 0
    moved = tmp_path / "uploaded" / "a"  # e.g. a Kaggle dataset, another machine
    moved.parent.mkdir()
    a.rename(moved)
    for extra in ([], ["--postprocess", moved / "seg_postprocess.json"]):  # by default and named: the same answer
        result = cli("predict-seg", "--run", moved, "--data", tiny_data, "--split", "test", "--out",
                        tmp_path / "test.csv", "--overwrite", *extra, *CPU_QUIET)
        assert result.exit_code == 0, result.output
    retuned = cli("tune-seg", "--store", store_paths(val)[0], "--data", tiny_data, "--out", tmp_path / "re.csv")
    assert retuned.exit_code == 0, retuned.output  # the store's runs are known by what they are, not by a path
    assert cli("predict-seg", "--run", moved, "--data", tiny_data, "--split", "test", "--out", tmp_path / "t2.csv",
                  "--postprocess", tmp_path / "re_postprocess.json", *CPU_QUIET).exit_code == 0
    impostor = copy_run(seg_run_b, tmp_path, "a")  # another run at the old path, with the stale tuning
    shutil.copy(moved / "seg_postprocess.json", impostor / "seg_postprocess.json")
    before = sorted(p.name for p in tmp_path.iterdir())
    for extra in ([], ["--postprocess", tmp_path / "re_postprocess.json"]):
        stale = cli("predict-seg", "--run", impostor, "--data", tiny_data, "--split", "test", "--out",
                       tmp_path / "t3.csv", *extra, *CPU_QUIET)
        assert stale.exit_code == 2 and "were tuned for runs" in stale.stderr, stale.output
        assert len(stale.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_test_masks_of_an_untuned_run_are_refused_in_one_line(seg_run, tiny_data, tmp_path):
    run = copy_run(seg_run, tmp_path, "run")
    (run / "seg_postprocess.json").unlink(missing_ok=True)
    result = cli("predict-seg", "--run", run, "--data", tiny_data, "--split", "test", "--out", tmp_path / "t.csv",
                    *CPU_QUIET)
    assert result.exit_code == 2 and "no seg_postprocess.json" in result.stderr and "--split val" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and sorted(os.listdir(tmp_path)) == ["run"]


def test_a_tuned_file_without_run_fingerprints_is_refused_with_its_reason(seg_run, tiny_data, tmp_path):
    run = copy_run(seg_run, tmp_path, "run")
    assert cli("predict-seg", "--run", run, "--data", tiny_data, "--split", "val", "--out", tmp_path / "v.csv",
                  *CPU_QUIET).exit_code == 0
    post = json.loads((run / "seg_postprocess.json").read_text())
    del post["fingerprints"]
    (run / "seg_postprocess.json").write_text(json.dumps(post))
    result = cli("predict-seg", "--run", run, "--data", tiny_data, "--split", "test", "--out", tmp_path / "t.csv",
                    *CPU_QUIET)
    assert result.exit_code == 2 and "need a list of run fingerprints" in result.stderr and "tune them again" in result.stderr


def test_thresholds_record_the_segmentation_run_whose_store_they_gate_on(seg_run, seg_run_b, tiny_classifier_run,
                                                                        tiny_data, tmp_path):
    for name, run in (("a", seg_run), ("b", seg_run_b)):
        for split in ("val", "test"):
            out = tmp_path / f"{name}_{split}.csv"
            assert cli("predict-seg", "--run", run, "--data", tiny_data, "--split", split, "--out", out,
                          "--overwrite", *CPU_QUIET).exit_code == 0
    classifier = copy_run(tiny_classifier_run, tmp_path, "cls")
    tuned = cli("tune-threshold", "--run", classifier, "--data", tiny_data, "--seg", tmp_path / "a_val.csv",
                   "--seg-store", store_paths(tmp_path / "a_val.csv")[0], "--sources", "max")
    assert tuned.exit_code == 0, tuned.output
    assert json.loads((classifier / "thresholds.json").read_text())["segmentation"]["fingerprints"]
    common = ["predict", "--seg", tmp_path / "a_test.csv", "--run", classifier, "--data", tiny_data, *CPU_QUIET]
    ok = cli(*common, "--seg-store", store_paths(tmp_path / "a_test.csv")[0], "--out", tmp_path / "sub.csv")
    assert ok.exit_code == 0, ok.output
    other = cli(*common, "--seg-store", store_paths(tmp_path / "b_test.csv")[0], "--out", tmp_path / "sub2.csv")
    assert other.exit_code == 2 and "segmentation runs" in other.stderr and "were tuned for runs" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1 and not (tmp_path / "sub2.csv").exists()


def test_out_of_fold_tuning_uses_every_train_image_once(tiny_data, tmp_path):
    """A K-fold segmentation run's --split val is out-of-fold: every train image once, each
    predicted by the fold model that did not train on it, and tuned on all of them."""
    from cloudpipe.data.probstore import read_store
    from cloudpipe.data.runfolder import read_splits

    run = tmp_path / "folds"
    result = cli("train-seg", "--data", tiny_data, "--out", run, "--epochs", 1, "--image-size", 32, 64, "--folds", 3,
                    "--arch", "tiny", "--weights", "none", *CPU_QUIET)
    assert result.exit_code == 0, result.output
    val = tmp_path / "val_seg.csv"
    result = cli("predict-seg", "--run", run, "--data", tiny_data, "--split", "val", "--out", val, *CPU_QUIET)
    assert result.exit_code == 0, result.output
    train_images = sorted(set(presence(read_train(tiny_data)).index))
    _, info = read_store(store_paths(val)[0])
    assert sorted(info.images) == train_images and len(info.images) == len(set(info.images))
    splits = read_splits(run, 3)
    assert [i for s in splits for i in s.val] == info.images  # fold by fold, each image by the model that held it out
    assert all(not set(s.val) & set(s.train) for s in splits)
    assert f"{len(train_images)} images" in result.output  # tuned on all of them


def test_an_ensemble_never_writes_a_member_runs_own_file(seg_run, seg_run_b, tiny_data, tmp_path):
    """``--out A/seg.csv`` for an ensemble would put its post-processing at A/seg_postprocess.json,
    run A's own file: refused with or without --overwrite, and A's file is left as it was."""
    a, b = copy_run(seg_run, tmp_path, "a"), copy_run(seg_run_b, tmp_path, "b")
    own = a / "seg_postprocess.json"
    own.write_text('{"mine": 1}\n')
    for extra in ((), ("--overwrite",)):
        result = cli("predict-seg", "--run", a, "--run", b, "--data", tiny_data, "--split", "val", "--out", a / "seg.csv",
                     *extra, *CPU_QUIET)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert f"{own}: output path is also an input" in result.stderr
    assert own.read_text() == '{"mine": 1}\n' and not (a / "seg.csv").exists()


def test_no_keep_store_writes_the_same_masks_without_probabilities_and_drops_an_old_store(seg_run, tiny_data, tmp_path):
    run = copy_run(seg_run, tmp_path, "run")
    kept, bare = tmp_path / "kept.csv", tmp_path / "bare.csv"
    for out, extra in ((kept, []), (bare, ["--no-keep-store"])):
        result = cli("predict-seg", "--run", run, "--data", tiny_data, "--split", "val", "--out", out, *CPU_QUIET, *extra)
        assert result.exit_code == 0, result.output
    assert kept.read_bytes() == bare.read_bytes()
    assert all(p.exists() for p in store_paths(kept)) and not any(p.exists() for p in store_paths(bare))
    result = cli("predict-seg", "--run", run, "--data", tiny_data, "--split", "val", "--out", kept, *CPU_QUIET,
                 "--no-keep-store", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in store_paths(kept))  # it would no longer match the masks
    test = tmp_path / "test.csv"
    result = cli("predict-seg", "--run", run, "--data", tiny_data, "--split", "test", "--out", test, *CPU_QUIET, "--no-keep-store")
    assert result.exit_code == 0, result.output
    assert test.exists() and not any(p.exists() for p in store_paths(test))
