"""predict: gate a segmentation submission with the classifier."""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cloudpipe.cli import main
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.rle import mask2rle
from cloudpipe.data.kaggle import read_mask_csv
from cloudpipe.data.outputs import lock_path, output_lock
from cloudpipe.engine.settings import InferenceSettings
from cloudpipe.pipeline.predict import predict_submission
from tests.conftest import CLASSES, cli

CPU = InferenceSettings(device="cpu", workers=0, progress=False)


def seg_predictions(data, seed=0, shuffle=True) -> pd.DataFrame:
    """A segmentation submission for the test images: random blocky masks, some empty, some
    written unusually but validly, with a leading zero (which must be copied through byte
    for byte)."""
    rng = np.random.default_rng(seed)
    sample = pd.read_csv(data / "sample_submission.csv")
    rles = []
    for i in range(len(sample)):
        mask = np.zeros((350, 525), np.uint8)
        if rng.random() < 0.8:
            r, c = rng.integers(0, 300), rng.integers(0, 450)
            mask[r : r + rng.integers(5, 50), c : c + rng.integers(5, 70)] = 1
        rle = mask2rle(mask)
        rles.append("0" + rle if i % 7 == 3 and rle else rle)
    frame = pd.DataFrame({"Image_Label": sample["Image_Label"], "EncodedPixels": rles})
    return frame.sample(frac=1, random_state=seed) if shuffle else frame


@pytest.fixture()
def seg_csv(tiny_data, tmp_path):
    path = tmp_path / "seg.csv"
    seg_predictions(tiny_data).to_csv(path, index=False)
    return path


def invoke(*args):
    return cli("predict", *args, "--workers", "0", "--quiet", "--device", "cpu")


def test_predict_gates_and_keeps_order(tiny_data, tiny_classifier_run, seg_csv, tmp_path):
    out = tmp_path / "sub" / "submission.csv"
    result = invoke("--seg", seg_csv, "--run", tiny_classifier_run, "--data", tiny_data, "--out", out, "--thresholds", 0.5)
    assert result.exit_code == 0, result.output
    assert "img/s" in result.output and "kept/blanked" in result.output
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    sample = pd.read_csv(tiny_data / "sample_submission.csv")
    assert list(sub.columns) == ["Image_Label", "EncodedPixels"]
    assert list(sub["Image_Label"]) == list(sample["Image_Label"])
    probs = pd.read_csv(tmp_path / "sub" / "submission_probs.csv").set_index("image")
    assert list(probs.columns) == list(CLASSES)
    seg = pd.read_csv(seg_csv, dtype=str, keep_default_na=False).set_index("Image_Label")["EncodedPixels"]
    for label, rle in zip(sub["Image_Label"], sub["EncodedPixels"]):
        image, cls = label.rsplit("_", 1)
        if probs.loc[image, cls] < 0.5:
            assert rle == ""
        else:
            assert rle == seg[label]  # byte-identical, odd spacing included
    assert read_mask_csv(out, shape=(350, 525)) is not None  # a valid submission
    # kept/blanked count the gate's decisions over every pair, as report does (empty masks too).
    for c in CLASSES:
        kept, blanked = int((probs[c] >= 0.5).sum()), int((probs[c] < 0.5).sum())
        assert f"{c} {kept}/{blanked}" in result.output and kept + blanked == len(probs), (c, result.output)


def test_python_api_takes_and_returns_dataframes(tiny_data, tiny_classifier_run):
    seg = seg_predictions(tiny_data)
    summary = predict_submission(seg, tiny_classifier_run, tiny_data, None, thresholds=0.0, settings=CPU)
    # Threshold 0 keeps every mask: the submission is the input, in sample order.
    expected = seg_predictions(tiny_data, shuffle=False)
    assert summary.submission["EncodedPixels"].tolist() == expected["EncodedPixels"].tolist()
    assert sum(summary.blanked.values()) == 0


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing_image", "image not found"),
        ("truncated_image", "truncated JPEG"),
        ("extra_image_in_seg", "extra image"),
        ("val_masks_as_seg", "--seg wants the test masks of sample_submission.csv's images: predict-seg --split test's CSV"),
        ("missing_image_in_seg", "lacks 1 image"),
        ("bad_rle", "line"),
        ("threshold_file_out_of_range", "thresholds: Gravel: must be a number in [0, 1], got 1.5"),
        ("threshold_file_missing_class", "thresholds: Sugar: missing"),
        ("segmentation_run", "needs a classifier"),
        ("corrupt_checkpoint", "cannot read checkpoint"),
        ("out_is_input", "also an input"),
    ],
)
def test_bad_inputs_exit_2_and_write_nothing(tiny_data, tiny_classifier_run, seg_csv, tmp_path, damage, message):
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(tiny_data, data)
    shutil.copytree(tiny_classifier_run, run)
    out = tmp_path / "sub" / "submission.csv"
    extra: list = []
    victim = sorted((data / "test_images").iterdir())[2]
    seg = pd.read_csv(seg_csv, dtype=str, keep_default_na=False)
    if damage == "missing_image":
        victim.unlink()
    elif damage == "truncated_image":
        victim.write_bytes(victim.read_bytes()[:-300])
    elif damage == "extra_image_in_seg":
        seg = pd.concat([seg, pd.DataFrame({"Image_Label": [f"zzz.jpg_{c}" for c in CLASSES], "EncodedPixels": ""})])
    elif damage == "val_masks_as_seg":  # masks of training images (a --split val CSV)
        seg = pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False).iloc[:8]
        extra = ["--mask-shape", 64, 96]
    elif damage == "missing_image_in_seg":
        seg = seg[~seg["Image_Label"].str.startswith(victim.name)]
    elif damage == "bad_rle":
        seg.iloc[5, 1] = "5 3 4 1"
    elif damage.startswith("threshold_file"):
        values = {c: 0.5 for c in CLASSES}
        if damage.endswith("range"):
            values["Gravel"] = 1.5
        else:
            del values["Sugar"]
        (tmp_path / "t.json").write_text(json.dumps(values))
        extra = ["--thresholds", tmp_path / "t.json"]
    elif damage == "segmentation_run":
        import torch

        state = torch.load(run / "best.pt", weights_only=True)
        state["config"]["task"] = "segmentation"
        torch.save(state, run / "best.pt")
    elif damage == "corrupt_checkpoint":
        (run / "best.pt").write_bytes(b"not a checkpoint")
    elif damage == "out_is_input":
        out = seg_csv
    seg.to_csv(seg_csv, index=False)
    before = seg_csv.read_bytes()
    result = invoke("--seg", seg_csv, "--run", run, "--data", data, "--out", out, *extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    if out != seg_csv:
        assert not out.exists() and not (out.parent / "submission_probs.csv").exists()
    assert seg_csv.read_bytes() == before


def test_refuses_to_overwrite_without_flag(tiny_data, tiny_classifier_run, seg_csv, tmp_path):
    out = tmp_path / "submission.csv"
    out.write_text("earlier work")
    result = invoke("--seg", seg_csv, "--run", tiny_classifier_run, "--data", tiny_data, "--out", out)
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert out.read_text() == "earlier work"
    again = invoke("--seg", seg_csv, "--run", tiny_classifier_run, "--data", tiny_data, "--out", out, "--overwrite")
    assert again.exit_code == 0, again.output
    assert out.read_text().startswith("Image_Label,EncodedPixels")


def test_interrupted_write_leaves_no_file(tiny_data, tiny_classifier_run, seg_csv, tmp_path, monkeypatch):
    out = tmp_path / "submission.csv"
    real = pd.DataFrame.to_csv

    def crash_midway(self, path, *args, **kwargs):
        real(self.head(3), path, *args, **kwargs)  # part of the file is on disk...
        raise KeyboardInterrupt  # ...when the run is interrupted

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        predict_submission(seg_csv, tiny_classifier_run, tiny_data, out, settings=CPU)
    assert list(tmp_path.glob("submission*")) == [] and list(tmp_path.glob(".submission*")) == []


def test_image_undecodable_in_a_worker_is_still_one_line(tiny_data, tiny_classifier_run, seg_csv, tmp_path, monkeypatch):
    import cloudpipe.data.datasets

    def broken(path, size, reduction=1):
        raise CloudpipeError("cannot decode image (corrupt JPEG?)", path=path)

    monkeypatch.setattr(cloudpipe.data.datasets, "read_image", broken)  # forked workers inherit the patch
    out = tmp_path / "submission.csv"
    result = CliRunner().invoke(main, ["predict", "--seg", str(seg_csv), "--run", str(tiny_classifier_run), "--data",
                                       str(tiny_data), "--out", str(out), "--workers", "1", "--quiet", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "cannot decode image" in result.stderr and ".jpg" in result.stderr
    assert not out.exists()


def one_error_line(result, message):
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_full_disk_on_the_second_file_keeps_the_old_pair(tiny_data, tiny_classifier_run, seg_csv, tmp_path, monkeypatch):
    out, probs = tmp_path / "submission.csv", tmp_path / "submission_probs.csv"
    out.write_text("old submission")
    probs.write_text("old probs")
    real, calls = pd.DataFrame.to_csv, []

    def second_fills_the_disk(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            return real(self, path, *args, **kwargs)  # the probabilities' temporary file is complete
        real(self.head(3), path, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_csv", second_fills_the_disk)
    result = invoke("--seg", seg_csv, "--run", tiny_classifier_run, "--data", tiny_data, "--out", out, "--overwrite")
    one_error_line(result, f"error: {out}: cannot write (No space left on device)")
    assert len(calls) == 2
    assert out.read_text() == "old submission" and probs.read_text() == "old probs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.csv", "submission.csv", "submission_probs.csv"]


def test_second_writer_of_the_same_output_fails_at_once(tiny_data, tiny_classifier_run, seg_csv, tmp_path, monkeypatch):
    import cloudpipe.engine.infer

    out = tmp_path / "submission.csv"
    monkeypatch.setattr(cloudpipe.engine.infer, "predict_presence", lambda *a, **k: pytest.fail("inference ran"))
    for held in (out, tmp_path / "submission_probs.csv"):
        with output_lock(held):
            result = invoke("--seg", seg_csv, "--run", tiny_classifier_run, "--data", tiny_data, "--out", out)
        one_error_line(result, f"{held}: is being written by another cloudpipe process (pid {os.getpid()})")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.csv"]


def test_stale_lock_is_taken_over(tiny_data, tiny_classifier_run, seg_csv, tmp_path, dead_pid):
    out = tmp_path / "submission.csv"
    lock_path(out).write_text(f"{dead_pid}\n")  # its writer was killed with -9
    result = invoke("--seg", seg_csv, "--run", tiny_classifier_run, "--data", tiny_data, "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.csv", "submission.csv", "submission_probs.csv"]


def test_refuses_an_output_among_the_test_images(tiny_data, tiny_classifier_run, seg_csv):
    image = sorted((tiny_data / "test_images").iterdir())[0]
    before = image.read_bytes()
    result = invoke("--seg", seg_csv, "--run", tiny_classifier_run, "--data", tiny_data, "--out", image, "--overwrite")
    one_error_line(result, "inside the input folder")
    assert image.read_bytes() == before


def test_ensemble_of_classifier_runs(tiny_data, tiny_classifier_run, tiny_classifier_run_b, tmp_path):
    from cloudpipe.engine.infer import predict_presence
    from cloudpipe.pipeline.tune import ThresholdFiles, tune_thresholds

    a, b = tiny_classifier_run, tiny_classifier_run_b
    seg = seg_predictions(tiny_data)
    with pytest.raises(CloudpipeError, match="needs --thresholds FILE"):
        predict_submission(seg, [a, b], tiny_data, None, settings=CPU)
    tuned = tmp_path / "ens.json"
    tune_thresholds([a, b], tiny_data, weights=[1, 3], files=ThresholdFiles(tuned))
    with pytest.raises(CloudpipeError, match="were tuned for runs"):
        predict_submission(seg, [a, b], tiny_data, None, thresholds=tuned, settings=CPU)  # other weights
    single = tmp_path / "a.json"
    tune_thresholds(a, tiny_data, files=ThresholdFiles(single))
    with pytest.raises(CloudpipeError, match="were tuned for runs"):
        predict_submission(seg, [a, b], tiny_data, None, weights=[1, 3], thresholds=single, settings=CPU)
    summary = predict_submission(seg, [a, b], tiny_data, tmp_path / "sub.csv", weights=[1, 3], thresholds=tuned,
                                 settings=CPU)
    paths = [tiny_data / "test_images" / i for i in summary.probs.index]
    expected = 0.25 * predict_presence(a, paths, CPU) + 0.75 * predict_presence(b, paths, CPU)
    np.testing.assert_allclose(summary.probs.to_numpy(), expected, rtol=1e-6)
    assert (tmp_path / "sub.csv").exists() and (tmp_path / "sub_probs.csv").exists()


def test_predict_gates_on_the_sources_thresholds_json_names(tiny_data, tiny_classifier_run, seg_csv, tmp_path):
    from cloudpipe.algorithms.presence import PixelStats, blend
    from cloudpipe.data.kaggle import list_test_images
    from cloudpipe.data.probstore import read_store
    from tests.conftest import write_store

    images = list_test_images(tiny_data)
    store = write_store(tmp_path / "test_seg_probs.npy", images, "test")
    head = tmp_path / "test_seg_presence.csv"
    head_probs = pd.DataFrame(np.linspace(0.05, 0.95, len(images) * 4).reshape(-1, 4), index=pd.Index(images, name="image"),
                              columns=list(CLASSES))
    head_probs.reset_index().to_csv(head, index=False)
    gates = {"Fish": {"classifier": 1.0}, "Flower": {"head": 1.0}, "Gravel": {"top_mean": 1.0},
             "Sugar": {"classifier": 0.5, "max": 0.5}}
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({**{c: 0.45 for c in CLASSES}, "gate": gates, "at_least_one": True, "top_k": 5000}))
    out = tmp_path / "sub.csv"
    result = invoke("--seg", seg_csv, "--run", tiny_classifier_run, "--data", tiny_data, "--out", out,
                    "--thresholds", thresholds, "--presence", head)
    assert result.exit_code == 2 and "--seg-store" in result.stderr and not out.exists()
    result = invoke("--seg", seg_csv, "--run", tiny_classifier_run, "--data", tiny_data, "--out", out,
                    "--thresholds", thresholds, "--presence", head, "--seg-store", store)
    assert result.exit_code == 0, result.output
    assert "at least one class per image" in result.output
    written = pd.read_csv(tmp_path / "sub_probs.csv").set_index("image")
    classifier = pd.read_csv(tmp_path / "sub_probs.csv").set_index("image")["Fish"]  # Fish is gated on it alone
    stats = PixelStats(top_k=5000).scores(read_store(store)[0])
    expected = blend({"classifier": np.repeat(classifier.to_numpy()[:, None], 4, 1), "head": head_probs.to_numpy(), **stats},
                     {**gates, "Sugar": {"max": 1.0}})
    np.testing.assert_allclose(written[["Fish", "Flower", "Gravel"]].to_numpy(), expected[:, :3], atol=1e-6)
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    drawn = sub.assign(image=sub["Image_Label"].str.rsplit("_", n=1).str[0])
    seg = pd.read_csv(seg_csv, dtype=str, keep_default_na=False)
    has_mask = set(seg.loc[seg["EncodedPixels"] != "", "Image_Label"].str.rsplit("_", n=1).str[0])
    assert set(drawn.loc[drawn["EncodedPixels"] != "", "image"]) == has_mask  # every image with a mask keeps one


def test_predict_under_torchrun_matches_one_process(tiny_data, tiny_classifier_run, seg_csv, tmp_path, torchrun):
    one, two = tmp_path / "one" / "submission.csv", tmp_path / "two" / "submission.csv"
    args = ("--seg", seg_csv, "--run", tiny_classifier_run, "--data", tiny_data, "--thresholds", 0.5, "--batch-size", 2)
    result = invoke(*args, "--out", one)
    assert result.exit_code == 0, result.output
    proc = torchrun("predict", *args, "--out", two, "--workers", 0, "--quiet", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone reports
    assert two.read_bytes() == one.read_bytes()
    probs = [pd.read_csv(p.with_name("submission_probs.csv")).set_index("image") for p in (one, two)]
    pd.testing.assert_frame_equal(probs[1], probs[0], atol=1e-5)
    assert sorted(p.name for p in two.parent.iterdir()) == ["submission.csv", "submission_probs.csv"]


def test_a_string_where_thresholds_json_wants_true_or_false_is_one_line(tiny_data, tiny_classifier_run, seg_csv, tmp_path):
    thresholds = tmp_path / "t.json"
    thresholds.write_text(json.dumps({**{c: 0.5 for c in CLASSES}, "at_least_one": "false"}))
    out = tmp_path / "sub.csv"
    result = invoke("--seg", seg_csv, "--run", tiny_classifier_run, "--data", tiny_data, "--out", out,
                    "--thresholds", thresholds)
    assert result.exit_code == 2 and "at_least_one: must be true or false, got 'false'" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_no_speed_is_claimed_when_no_model_runs(tiny_data, tiny_classifier_run, seg_csv, tmp_path):
    from cloudpipe.data.kaggle import list_test_images

    images = list_test_images(tiny_data)
    head = tmp_path / "test_seg_presence.csv"
    pd.DataFrame(0.7, index=pd.Index(images, name="image"), columns=list(CLASSES)).reset_index().to_csv(head, index=False)
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({**{c: 0.5 for c in CLASSES}, "gate": {c: {"head": 1.0} for c in CLASSES}}))
    result = invoke("--seg", seg_csv, "--run", tiny_classifier_run, "--data", tiny_data, "--out", tmp_path / "sub.csv",
                    "--thresholds", thresholds, "--presence", head)
    assert result.exit_code == 0, result.output
    assert "no model run" in result.output and "img/s" not in result.output  # it said e.g. 449781 img/s


def test_the_probabilities_written_are_the_ones_compared(tiny_data, tiny_classifier_run, seg_csv, tmp_path, monkeypatch):
    """A probability of 0.9999996 was written as 1.000000, so the file showed a pair at the
    threshold 1.0 that had been blanked; written in full, every decision can be checked from it."""
    import cloudpipe.engine.infer

    def near_one(run, paths, settings, desc="", dist=None):
        probs = np.full((len(paths), len(CLASSES)), 0.9999996)
        probs[::2] = 1.0
        return probs

    monkeypatch.setattr(cloudpipe.engine.infer, "predict_presence", near_one)
    out = tmp_path / "submission.csv"
    result = invoke("--seg", seg_csv, "--run", tiny_classifier_run, "--data", tiny_data, "--out", out, "--thresholds", 1.0)
    assert result.exit_code == 0, result.output
    probs = pd.read_csv(tmp_path / "submission_probs.csv").set_index("image")
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    seg = pd.read_csv(seg_csv, dtype=str, keep_default_na=False).set_index("Image_Label")["EncodedPixels"]
    for label, rle in zip(sub["Image_Label"], sub["EncodedPixels"]):
        image, cls = label.rsplit("_", 1)
        assert rle == (seg[label] if probs.loc[image, cls] >= 1.0 else ""), (label, probs.loc[image, cls])
    assert set(probs.to_numpy().ravel()) == {1.0, 0.9999996}


def test_a_partly_trained_k_fold_run_is_refused_or_used_loudly(tiny_data, seg_csv, tmp_path):
    """It used to predict with 1 of its 3 fold models and say nothing."""
    from cloudpipe.engine.train import train_run
    from tests.conftest import tiny_config

    run = tmp_path / "run"
    train_run(tiny_config(folds=3), tiny_data, run, fold=0, progress=False)
    out = tmp_path / "sub.csv"
    refused = invoke("--seg", seg_csv, "--run", run, "--data", tiny_data, "--out", out)
    assert refused.exit_code == 2 and not out.exists(), refused.output
    [line] = refused.stderr.strip().splitlines()
    assert "a 3-fold run with 1 fold model(s): fold1, fold2 have no best.pt" in line and "--allow-partial" in line
    allowed = invoke("--seg", seg_csv, "--run", run, "--data", tiny_data, "--out", out, "--allow-partial")
    assert allowed.exit_code == 0 and out.exists(), allowed.output
    assert "warning:" in allowed.stderr and "fold1, fold2 have no best.pt; using the 1 there are" in allowed.stderr
