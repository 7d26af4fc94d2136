"""cloudpipe demo at its smallest size, end to end, and cloudpipe show."""

from __future__ import annotations

import os
import re

import pandas as pd
import pytest
from click.testing import CliRunner

from cloudpipe.cli import main
from tests.conftest import CLASSES


@pytest.mark.slow
def test_demo_tiny_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--size", "tiny", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"(hidden; it becomes {out} once complete)" in result.output  # the steps' paths lie in the staging folder
    for step in ("synth", "train-seg", "predict-seg val", "predict-seg test", "train-classifier", "tune-threshold",
                 "predict", "report"):
        assert f"== {step}" in result.output
    rows = {}
    for name in ("all masks empty", "segmentation alone", "gated at 0.5", "gated, tuned thresholds",
                 "gated by true presence (oracle)"):
        line = next(line for line in result.output.splitlines() if line.strip().startswith(name))
        rows[name] = [float(v) for v in re.findall(r"\d\.\d{4}", line)]
        assert len(rows[name]) == 5 and all(0 <= v <= 1 for v in rows[name])  # 4 classes + mean
    assert "capture share" in result.output and (out / "report.html").stat().st_size > 10_000
    assert rows["gated by true presence (oracle)"][4] >= max(r[4] for r in rows.values())
    assert "Seconds per step" in result.output
    # The files a user would look at.
    assert (out / "runs" / "classifier" / "thresholds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "runs" / "seg" / "seg_postprocess.json").is_file()
    submission = pd.read_csv(out / "submissions" / "submission.csv")
    sample = pd.read_csv(out / "data" / "sample_submission.csv")
    assert list(submission["Image_Label"]) == list(sample["Image_Label"])
    # The printed Dice is the evaluation of the submission that was written.
    from cloudpipe.pipeline.evaluate import evaluate_files

    table = evaluate_files(out / "data" / "test_truth.csv", out / "submissions" / "submission.csv", (350, 525), (350, 525)).table
    assert [round(table[c], 4) for c in CLASSES] == rows["gated, tuned thresholds"][:4]

    again = CliRunner().invoke(main, ["demo", "--out", str(out), "--size", "tiny", "--quiet"])
    assert again.exit_code == 2 and "--overwrite" in again.stderr


def test_demo_overwrite_refuses_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--size", "tiny", "--overwrite", "--quiet"])
    assert result.exit_code == 2 and "refusing to delete" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_demo_out_a_link_or_a_file_is_refused(tmp_path):
    link, empty, plain = tmp_path / "link", tmp_path / "empty", tmp_path / "notes.txt"
    empty.mkdir()
    link.symlink_to(empty)
    plain.write_text("mine")
    for out, says in ((link, "symbolic link"), (plain, "not a folder")):
        result = CliRunner().invoke(main, ["demo", "--out", str(out), "--size", "tiny", "--quiet"])
        assert result.exit_code == 2 and says in result.stderr, result.output
    assert os.listdir(empty) == [] and plain.read_text() == "mine"
