"""cloudpipe report: its numbers equal evaluate's on the files a user would make, the page is
self-contained, bad inputs are one line and no file."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cloudpipe.algorithms.gating import gate
from cloudpipe.cli import main
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.kaggle import presence, read_mask_csv, read_train
from cloudpipe.pipeline.evaluate import evaluate_files
from cloudpipe.pipeline.report import score_submission, write_report
from tests.conftest import CLASSES


@pytest.fixture(scope="module")
def case(tiny_data, tmp_path_factory, noisy_segmentation):
    """Segmentation masks of 16 training images, informative probabilities, thresholds."""
    root = tmp_path_factory.mktemp("report")
    labels = presence(read_train(tiny_data))
    images = list(labels.index[:16])
    seg = root / "seg.csv"
    noisy_segmentation(tiny_data, images, seed=2).to_csv(seg, index=False)
    rng = np.random.default_rng(1)
    logits = (labels.loc[images].to_numpy() * 2 - 1) * 1.2 + rng.normal(0, 1.2, (16, 4))
    probs = pd.DataFrame(1 / (1 + np.exp(-logits)), index=pd.Index(images, name="image"), columns=list(CLASSES)).round(6)
    probs_csv = root / "probs.csv"
    probs.reset_index().to_csv(probs_csv, index=False)
    thresholds = root / "thresholds.json"
    thresholds.write_text(json.dumps(dict(zip(CLASSES, (0.4, 0.5, 0.6, 0.3)))))
    return seg, probs_csv, probs, thresholds, root


def gated_file(seg, probs, thresholds, path):
    frame = read_mask_csv(seg)
    gate(frame, probs, thresholds)[["Image_Label", "EncodedPixels"]].to_csv(path, index=False)
    return path


def test_numbers_equal_evaluate_on_the_gated_files(tiny_data, case, tmp_path):
    seg, probs_csv, probs, thresholds_file, _ = case
    scored = score_submission(tiny_data, seg, probs_csv=probs_csv, thresholds_file=thresholds_file, progress=False)
    rows = {r["submission"]: r for r in scored.headline()}
    truth = tiny_data / "train.csv"
    thresholds = json.loads(thresholds_file.read_text())
    oracle = presence(read_train(tiny_data)).loc[probs.index].astype(float)  # 1 present, 0 absent: gate at 0.5
    files = {
        "segmentation alone": seg,
        "gated at 0.5": gated_file(seg, probs, dict.fromkeys(CLASSES, 0.5), tmp_path / "half.csv"),
        "gated, tuned thresholds": gated_file(seg, probs, thresholds, tmp_path / "tuned.csv"),
        "gated by true presence (oracle)": gated_file(seg, oracle, dict.fromkeys(CLASSES, 0.5), tmp_path / "oracle.csv"),
    }
    for name, path in files.items():
        table = evaluate_files(truth, path, (64, 96), (350, 525)).table
        for key in (*CLASSES, "mean"):
            assert rows[name][key] == pytest.approx(table[key], abs=1e-12), (name, key)
    empty = tmp_path / "empty.csv"
    read_mask_csv(seg).assign(EncodedPixels="")[["Image_Label", "EncodedPixels"]].to_csv(empty, index=False)
    assert rows["all masks empty"]["mean"] == pytest.approx(evaluate_files(truth, empty, (64, 96), (350, 525)).table["mean"])
    assert rows["gated by true presence (oracle)"]["mean"] >= max(rows[n]["mean"] for n in files)
    assert scored.gate.thresholds == thresholds


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.scripts, self.external, self.text = [], 0, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http", "//", "file:")):
                self.external.append(attrs[key])

    def handle_data(self, data):
        self.text.append(data)


def test_cli_writes_one_self_contained_page(tiny_data, case, tmp_path):
    seg, probs_csv, _, thresholds, _ = case
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", "--data", str(tiny_data), "--seg", str(seg), "--probs", str(probs_csv),
                                       "--thresholds", str(thresholds), "--out", str(out), "--overlays", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "gated by true presence (oracle)" in result.output and "capture share" in result.output
    page = Page()
    page.feed(out.read_text())
    assert page.scripts == 0 and page.external == []
    assert len(page.images) == 2 + 1 + 4  # 2 worst + 1 best overlays; thresholds, Dice and presence vs probability, vs area
    for src in page.images:
        kind, data = re.fullmatch(r"data:image/(png|jpeg);base64,(.+)", src).groups()
        raw = base64.b64decode(data)
        assert raw.startswith(b"\x89PNG" if kind == "png" else b"\xff\xd8")
    text = " ".join(page.text)
    assert all(c in text for c in CLASSES) and "Where the Dice goes" in text
    html = out.read_text()
    assert html.count('<tr class="key">') == 1 and '<tr class="key"><td>gated by true presence (oracle)' in html
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


TUNED, IN_SAMPLE = "gated, tuned thresholds", "gated, tuned on these images (in-sample)"


def test_without_probabilities_and_with_in_sample_thresholds(tiny_data, case, tmp_path):
    seg, probs_csv, *_ = case
    plain = write_report(tiny_data, seg, tmp_path / "plain.html", overlays=1, progress=False)
    assert [r["submission"] for r in plain.headline][-1] == "gated by true presence (oracle)"
    tuned = score_submission(tiny_data, seg, probs_csv=probs_csv, progress=False)
    assert "in-sample" in tuned.thresholds_source
    rows = {r["submission"]: r for r in tuned.headline()}
    assert rows[IN_SAMPLE]["mean"] >= rows["gated at 0.5"]["mean"] - 1e-12  # tuned here: the best
    assert TUNED not in rows
    # Printed and drawn: the row says it is in-sample on stdout and on the page.
    result = run_report(tiny_data, "--seg", seg, "--probs", probs_csv, "--out", tmp_path / "in.html")
    assert result.exit_code == 0, result.output
    assert IN_SAMPLE in result.stdout and TUNED not in result.stdout
    assert IN_SAMPLE in (tmp_path / "in.html").read_text()
    given = run_report(tiny_data, "--seg", seg, "--probs", probs_csv, "--thresholds", 0.5, "--out", tmp_path / "given.html")
    assert given.exit_code == 0 and TUNED in given.stdout and "in-sample" not in given.stdout, given.output


def test_a_gated_submission_as_seg_is_warned_about(tiny_data, case, tmp_path):
    """predict writes <stem>_probs.csv beside each submission it gates: report says its masks are no
    'segmentation alone', and scores them all the same."""
    seg, probs_csv, probs, thresholds, _ = case
    submission = gated_file(seg, probs, json.loads(thresholds.read_text()), tmp_path / "submission.csv")
    shutil.copyfile(probs_csv, tmp_path / "submission_probs.csv")
    result = run_report(tiny_data, "--seg", submission, "--probs", tmp_path / "submission_probs.csv", "--out", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    assert "looks gated" in result.stderr and "pass predict-seg's masks (RUN/test_seg.csv) as --seg" in result.stderr
    assert "looks gated" in (tmp_path / "r.html").read_text()
    plain = run_report(tiny_data, "--seg", seg, "--probs", probs_csv, "--out", tmp_path / "p.html")
    assert plain.exit_code == 0 and "looks gated" not in plain.output


def run_report(tiny_data, *args):
    return CliRunner().invoke(main, ["report", "--data", str(tiny_data), *map(str, args), "--quiet"])


def test_bad_inputs_are_one_line_and_no_file(tiny_data, case, tmp_path):
    seg, probs_csv, probs, thresholds, _ = case
    out = tmp_path / "r.html"
    few = tmp_path / "few.csv"
    probs.iloc[:5].reset_index().to_csv(few, index=False)
    truth = tmp_path / "truth.csv"
    read_mask_csv(tiny_data / "train.csv").iloc[8:][["Image_Label", "EncodedPixels"]].to_csv(truth, index=False)
    cases = [
        (["--seg", seg, "--probs", few], "few.csv: lacks 11 image(s) of"),
        (["--seg", seg, "--truth", truth, "--truth-shape", 64, 96], "extra image(s)"),
        (["--seg", tiny_data / "test_truth.csv"], "; --truth must hold their masks (test images: --truth test_truth.csv"),
        (["--seg", seg, "--probs", probs_csv, "--thresholds", 2], "'2' is not a threshold in [0, 1]"),
        (["--seg", seg, "--mask-shape", 1400, 2100], "--pred-shape H W with their real size"),
        (["--seg", seg, "--probs", probs_csv, "--thresholds", probs_csv], "not a readable JSON file"),
        (["--seg", seg, "--thresholds", thresholds], "--thresholds needs presence probabilities"),
    ]
    for args, message in cases:
        result = run_report(tiny_data, *args, "--out", out)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not out.exists()
    out.write_text("old")
    result = run_report(tiny_data, "--seg", seg, "--out", out)
    assert result.exit_code == 2 and "--overwrite" in result.stderr and out.read_text() == "old"


def test_a_gate_on_other_sources_needs_the_scores_it_gated_on(tiny_data, case, tmp_path):
    seg, probs_csv, _, _, _ = case
    run = tmp_path / "run"
    run.mkdir()
    (run / "val_probs.csv").write_bytes(probs_csv.read_bytes())
    gate = {c: {"top_mean": 1.0} for c in CLASSES}
    (run / "thresholds.json").write_text(json.dumps({**dict.fromkeys(CLASSES, 0.5), "gate": gate, "top_k": 18000,
                                                     "area_threshold": 0.5}))
    with pytest.raises(CloudpipeError, match="gates on top_mean.*pass --probs"):
        score_submission(tiny_data, seg, run_dir=run, progress=False)


def test_the_at_least_one_rule_is_scored_as_predict_applies_it(tiny_data, case, tmp_path):
    """Thresholds that blank every mask of some images: the tuned row is the Dice of the file
    predict writes with the rule (a mask kept in each such image), not of plain thresholds."""
    seg, probs_csv, probs, _, _ = case
    strict = dict.fromkeys(CLASSES, 0.8)
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({**strict, "at_least_one": True}))
    scored = score_submission(tiny_data, seg, probs_csv=probs_csv, thresholds_file=thresholds, progress=False)
    assert scored.gate.at_least_one and "with its at-least-one-class rule" in scored.thresholds_source
    tuned = {r["submission"]: r for r in scored.headline()}["gated, tuned thresholds"]
    frame = read_mask_csv(seg)
    with_rule, without = tmp_path / "rule.csv", tmp_path / "plain.csv"
    gate(frame, probs, strict, at_least_one=True)[["Image_Label", "EncodedPixels"]].to_csv(with_rule, index=False)
    gate(frame, probs, strict)[["Image_Label", "EncodedPixels"]].to_csv(without, index=False)
    truth = tiny_data / "train.csv"
    expected, plain = (evaluate_files(truth, f, (64, 96), (350, 525)).table for f in (with_rule, without))
    assert plain["mean"] != pytest.approx(expected["mean"])  # the rule changes something here
    for key in (*CLASSES, "mean"):
        assert tuned[key] == pytest.approx(expected[key], abs=1e-12), key
    kept = scored.best_gate()
    assert (kept & (scored.stats.pred_area > 0)).any(1)[(scored.stats.pred_area > 0).any(1)].all()


def test_thresholds_tuned_for_another_run_are_refused_as_predict_refuses_them(tiny_data, tiny_classifier_run,
                                                                              tiny_classifier_run_b, noisy_segmentation,
                                                                              tmp_path):
    import shutil

    run, other = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_classifier_run, run)
    shutil.copytree(tiny_classifier_run_b, other)
    foreign = tmp_path / "b_thresholds.json"
    assert CliRunner().invoke(main, ["tune-threshold", "--run", str(other), "--data", str(tiny_data),
                                     "--out", str(foreign)]).exit_code == 0
    splits = pd.read_csv(run / "splits.csv", dtype=str, keep_default_na=False)
    seg = tmp_path / "seg.csv"
    noisy_segmentation(tiny_data, list(splits.loc[splits["fold"] == "0", "image"])).to_csv(seg, index=False)
    result = CliRunner().invoke(main, ["report", "--data", str(tiny_data), "--seg", str(seg), "--run", str(run),
                                       "--thresholds", str(foreign), "--out", str(tmp_path / "r.html"), "--quiet"])
    assert result.exit_code == 2 and "were tuned for runs" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.html").exists()
