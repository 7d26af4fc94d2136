"""cloudpipe show: an image with its truth and predicted masks, one panel per class."""

from __future__ import annotations

import os
import shutil

import pandas as pd
from click.testing import CliRunner

from cloudpipe.cli import main
from cloudpipe.data.outputs import lock_path, output_lock
from tests.conftest import CLASSES


def test_show_draws_truth_and_prediction(tiny_data, tmp_path):
    image = pd.read_csv(tiny_data / "train.csv")["Image_Label"].iloc[0].rsplit("_", 1)[0]
    pred = tmp_path / "pred.csv"
    pd.DataFrame({"Image_Label": [f"{image}_{c}" for c in CLASSES], "EncodedPixels": ["1 5000", "", "", ""]}).to_csv(pred, index=False)
    out = tmp_path / "overlay.png"
    result = CliRunner().invoke(main, ["show", "--data", str(tiny_data), "--image", image, "--pred", str(pred), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    test_image = sorted((tiny_data / "test_images").iterdir())[0].name
    no_truth = CliRunner().invoke(main, ["show", "--data", str(tiny_data), "--image", test_image, "--out", str(tmp_path / "t.png")])
    assert no_truth.exit_code == 2 and "--pred" in no_truth.stderr
    unknown = CliRunner().invoke(main, ["show", "--data", str(tiny_data), "--image", "nope.jpg", "--out", str(tmp_path / "n.png")])
    assert unknown.exit_code == 2 and "nope.jpg" in unknown.stderr


def show(*args):
    return CliRunner().invoke(main, ["show", *map(str, args)])


def test_show_writes_overlay_png_by_default_as_report_and_predict_have_defaults(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = pd.read_csv(tiny_data / "train.csv")["Image_Label"].iloc[0].rsplit("_", 1)[0]
    result = show("--data", tiny_data, "--image", image)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = show("--data", tiny_data, "--image", image)
    assert again.exit_code == 2 and "--overwrite" in again.stderr


def test_show_refuses_to_write_its_inputs(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    image = sorted((data / "train_images").iterdir())[0]
    pred = tmp_path / "pred.csv"
    pred.write_text("Image_Label,EncodedPixels\n")
    for out in (image, image.with_suffix(".png"), data / "test_images" / "x.png", pred, data / "train.csv"):
        before = out.read_bytes() if out.exists() else None
        result = show("--data", data, "--image", image.name, "--pred", pred, "--out", out, "--overwrite")
        assert result.exit_code == 2, result.output
        assert "input" in result.stderr and result.stderr.count("\n") == 1
        assert (out.read_bytes() if out.exists() else None) == before


def test_show_second_writer_fails_and_a_stale_lock_is_taken_over(tiny_data, tmp_path, dead_pid):
    image = pd.read_csv(tiny_data / "train.csv")["Image_Label"].iloc[0].rsplit("_", 1)[0]
    out = tmp_path / "overlay.png"
    with output_lock(out):
        result = show("--data", tiny_data, "--image", image, "--out", out)
    assert result.exit_code == 2 and f"being written by another cloudpipe process (pid {os.getpid()})" in result.stderr
    assert os.listdir(tmp_path) == []
    lock_path(out).write_text(f"{dead_pid}\n")
    result = show("--data", tiny_data, "--image", image, "--out", out)
    assert result.exit_code == 0, result.output
    assert os.listdir(tmp_path) == ["overlay.png"]


def test_show_draws_test_truth_with_each_class_dice_and_takes_an_image_path(tiny_data, tmp_path, monkeypatch):
    import numpy as np

    import cloudpipe.show as show_module

    drawn = []
    real = show_module.overlay_figure
    monkeypatch.setattr(show_module, "overlay_figure", lambda *a, **k: drawn.append(k) or real(*a, **k))
    path = sorted((tiny_data / "test_images").iterdir())[0]
    truth = tiny_data / "test_truth.csv"  # at 350 x 525: no --truth-shape needed
    rows = pd.read_csv(truth, keep_default_na=False)
    mine = rows[rows["Image_Label"].str.startswith(path.name)]
    pred = tmp_path / "pred.csv"
    mine.assign(EncodedPixels=["", *mine["EncodedPixels"][1:]]).to_csv(pred, index=False)  # Fish blanked
    out = tmp_path / "test.png"
    result = show("--data", tiny_data, "--image", path, "--truth", truth, "--pred", pred, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fish_present = mine["EncodedPixels"].iloc[0] != ""
    assert np.allclose(drawn[0]["dice"], [0.0 if fish_present else 1.0, 1.0, 1.0, 1.0])
    assert drawn[0]["truth"].shape == (4, 350, 525) and drawn[0]["title"] == path.name
    only_truth = show("--data", tiny_data, "--image", path.name, "--truth", truth, "--out", tmp_path / "t.png")
    assert only_truth.exit_code == 0 and drawn[1]["dice"] is None
    missing = show("--data", tiny_data, "--image", tmp_path / "nope.jpg", "--truth", truth, "--out", tmp_path / "m.png")
    assert missing.exit_code == 2 and "nope.jpg: no such image file" in missing.stderr
    itself = show("--data", tiny_data, "--image", pred, "--pred", pred, "--out", pred, "--overwrite")
    assert itself.exit_code == 2 and "input" in itself.stderr
