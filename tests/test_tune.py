"""Threshold search on Dice after blanking, the thresholds file, and ``cloudpipe tune-threshold``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cloudpipe.algorithms.gating import gate
from cloudpipe.cli import main
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.metric import accuracy, dice_table, pair_stats
from cloudpipe.core.profile import join_label
from cloudpipe.data.kaggle import presence, read_probs_csv, read_train, to_wide
from cloudpipe.data.outputs import lock_path, output_lock
from cloudpipe.engine.settings import InferenceSettings
from cloudpipe.pipeline.gate import GateInputs, load_gate, resolve_gate
from cloudpipe.pipeline.tune import ThresholdFiles, compute_val_probs, tune_thresholds
from tests.conftest import CLASSES, SUBMISSION_SHAPE, train_tiny

CPU = InferenceSettings(device="cpu", workers=0, progress=False)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def brute_force(probs: np.ndarray, keep: np.ndarray, blank: np.ndarray, thresholds) -> np.ndarray:
    """Mean score at each threshold, pair by pair."""
    return np.array([np.mean([b if p < t else k for p, k, b in zip(probs, keep, blank)]) for t in thresholds])


def brute_candidates(probs: np.ndarray) -> list[float]:
    above = float(np.nextafter(max(probs), 2.0))
    return sorted({0.0, *map(float, probs), *([above] if above <= 1 else [])})


# ----------------------------------------------------------------------------- files and data


def write_probs(path: Path, probs: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    probs.rename_axis("image").reset_index().to_csv(path, index=False, float_format="%.6f")
    return path


@pytest.fixture(scope="module")
def tuning_case(tiny_data, tmp_path_factory, noisy_segmentation):
    """A hand-built run (only ``val_probs.csv``: 16 of the 24 training images, informative but
    imperfect) and segmentation predictions on 12 of these validation images."""
    root = tmp_path_factory.mktemp("tuning")
    labels = presence(read_train(tiny_data))
    images = list(labels.index)
    rng = np.random.default_rng(5)
    val = images[:16]
    logits = (labels.loc[val].to_numpy() * 2 - 1) * 1.5 + rng.normal(0, 1.5, (16, 4))
    probs = pd.DataFrame(1 / (1 + np.exp(-logits)), index=val, columns=list(CLASSES)).round(6)
    run = root / "run"
    write_probs(run / "val_probs.csv", probs)
    seg = root / "val_seg.csv"
    noisy_segmentation(tiny_data, images[4:16], seed=1).to_csv(seg, index=False)
    return run, seg, probs, images[4:16]


def copy_run(tuning_case, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tuning_case[0], run)
    return run


def test_tune_on_dice_matches_gating_and_brute_force(tiny_data, tuning_case, tmp_path):
    _, seg, probs, used = tuning_case
    run = copy_run(tuning_case, tmp_path)
    result = tune_thresholds(run, tiny_data, seg=seg, choice="best")  # the exact search, checked against brute force
    assert result.objective == "dice" and result.images == used
    assert "--seg covers 12 of the classifier's 16 validation images" in result.summary()  # said, not silent

    # Independently: gate the predictions as predict does, then score them with the metric.
    seg_frame = pd.read_csv(seg, dtype=str, keep_default_na=False)
    seg_frame[["image", "class_name"]] = seg_frame["Image_Label"].str.rsplit("_", n=1, expand=True)
    seg_frame = seg_frame[seg_frame["image"].isin(used)]
    truth = to_wide(read_train(tiny_data))

    def dice_at(thresholds: dict[str, float]) -> dict[str, float]:
        gated = to_wide(gate(seg_frame, probs, thresholds))
        return dice_table(pair_stats(truth, gated, (64, 96), SUBMISSION_SHAPE).dice())

    rows = {r["class"]: r for r in result.rows}
    tuned = dice_at(result.thresholds)
    for c in (*CLASSES, "mean"):
        assert rows[c]["dice_tuned"] == pytest.approx(tuned[c])
        assert rows[c]["dice_no_blank"] == pytest.approx(dice_at({k: 0.0 for k in CLASSES})[c])
        assert rows[c]["dice_at_0.5"] == pytest.approx(dice_at({k: 0.5 for k in CLASSES})[c])
        assert rows[c]["dice_tuned"] >= rows[c]["dice_no_blank"] - 1e-12
        assert rows[c]["dice_tuned"] >= rows[c]["dice_at_0.5"] - 1e-12
    # No threshold on a grid, nor any candidate, does better, class by class.
    grid = sorted({*np.linspace(0, 1, 51), *(t for c in CLASSES for t in brute_candidates(probs.loc[used, c]))})
    tables = [dice_at({k: t for k in CLASSES}) for t in grid]
    labels = presence(read_train(tiny_data)).loc[used]
    for c in CLASSES:
        assert rows[c]["dice_tuned"] == pytest.approx(max(table[c] for table in tables), abs=1e-12)
        p = probs.loc[used, c].to_numpy()
        removed = p < result.thresholds[c]
        assert rows[c]["removed"] == removed.sum()
        assert rows[c]["wrongly"] == (removed & (labels[c].to_numpy() > 0)).sum()
    assert tuned["mean"] > dice_at({k: 0.0 for k in CLASSES})["mean"]  # the false positives cost

    # Written files: predict's reader takes the JSON; the plot is a PNG.
    assert result.json_path == run / "thresholds.json" and result.plot_path == run / "thresholds.png"
    assert load_gate(run / "thresholds.json").thresholds == result.thresholds
    data = json.loads((run / "thresholds.json").read_text())
    assert data["objective"] == "dice" and data["images"] == len(used)
    assert (run / "thresholds.png").read_bytes()[:8] == PNG_SIGNATURE
    # The run's own default files are replaced on a re-tune.
    assert tune_thresholds(run, tiny_data, seg=seg, choice="best").thresholds == result.thresholds


def test_predict_picks_up_tuned_thresholds(tiny_data, tuning_case, tmp_path):
    _, seg, _, _ = tuning_case
    run = copy_run(tuning_case, tmp_path)
    result = tune_thresholds(run, tiny_data, seg=seg)
    spec, source = resolve_gate(run)
    assert (spec.thresholds, source) == (result.thresholds, str(run / "thresholds.json"))


def test_accuracy_fallback(tiny_data, tuning_case, tmp_path):
    _, _, probs, _ = tuning_case
    run = copy_run(tuning_case, tmp_path)
    result = tune_thresholds(run, tiny_data, files=ThresholdFiles(tmp_path / "acc.json"), choice="best")
    assert result.objective == "accuracy" and len(result.images) == 16
    assert "not the competition metric" in result.summary()
    labels = presence(read_train(tiny_data)).loc[probs.index].to_numpy()
    t = np.array([result.thresholds[c] for c in CLASSES])
    rows = {r["class"]: r for r in result.rows}
    for k, c in enumerate(CLASSES):
        assert rows[c]["acc_tuned"] == pytest.approx(accuracy(probs.to_numpy(), labels, t)[k])
        assert rows[c]["acc_at_0.5"] == pytest.approx(accuracy(probs.to_numpy(), labels, 0.5)[k])
        assert rows[c]["acc_tuned"] >= max(accuracy(probs.to_numpy(), labels, g)[k] for g in np.linspace(0, 1, 201))
    assert json.loads((tmp_path / "acc.json").read_text())["objective"] == "accuracy"
    assert (tmp_path / "acc.png").exists() and not (run / "thresholds.json").exists()


def test_explicit_outputs_are_not_overwritten(tiny_data, tuning_case, tmp_path):
    run = copy_run(tuning_case, tmp_path)
    out = tmp_path / "t.json"
    out.write_text("{}")
    with pytest.raises(CloudpipeError, match="already exists"):
        tune_thresholds(run, tiny_data, files=ThresholdFiles(out))
    assert out.read_text() == "{}"
    tune_thresholds(run, tiny_data, files=ThresholdFiles(out, overwrite=True))
    assert load_gate(out).thresholds


@pytest.fixture(scope="module")
def real_run(tiny_data, tmp_path_factory):
    """A tiny real classifier run with 2 folds (two epochs each, not all probabilities 0 or 1)."""
    run = tmp_path_factory.mktemp("real") / "run"
    return train_tiny(tiny_data, run, epochs=2, batch_size=4, folds=2)


def test_missing_val_probs_are_computed_out_of_fold(tiny_data, real_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(real_run, run)
    saved = read_probs_csv(run / "val_probs.csv")
    (run / "val_probs.csv").unlink()
    result = tune_thresholds(run, tiny_data, files=None, settings=CPU)
    assert result.probs_source.startswith("computed")
    assert sorted(result.images) == sorted(saved.index)  # every training image, out of fold
    computed = compute_val_probs(run, tiny_data, settings=CPU)
    np.testing.assert_allclose(computed.loc[saved.index].to_numpy(), saved.to_numpy(), atol=1e-5)


def test_missing_val_probs_of_a_hold_out_run(tiny_data, tmp_path):
    """Without folds, the run's own model predicts the validation images splits.csv recorded."""
    from cloudpipe.data.runfolder import read_splits
    run = tmp_path / "run"
    train_tiny(tiny_data, run, batch_size=None, accumulate=None, lr=None)  # the config's own batch and lr
    saved = read_probs_csv(run / "val_probs.csv")
    (run / "val_probs.csv").unlink()
    result = tune_thresholds(run, tiny_data, files=None, settings=CPU)
    [split] = read_splits(run, 0)
    assert result.images == split.val == list(saved.index)
    np.testing.assert_allclose(compute_val_probs(run, tiny_data, CPU).to_numpy(), saved.to_numpy(), atol=1e-5)
    (run / "splits.csv").unlink()
    with pytest.raises(CloudpipeError, match=r"no splits.csv \(training records the run.s split there\): not a training run"):
        tune_thresholds(run, tiny_data, files=None, settings=CPU)


# ----------------------------------------------------------------------------- the command


def run_cli(*args: object):
    return CliRunner().invoke(main, ["tune-threshold", *map(str, args)])


def test_cli_help():
    result = run_cli("--help")
    assert result.exit_code == 0 and "--seg" in result.output and "--objective" in result.output


def test_cli_end_to_end(tiny_data, tuning_case, tmp_path):
    _, seg, _, used = tuning_case
    run = copy_run(tuning_case, tmp_path)
    result = run_cli("--run", run, "--data", tiny_data, "--seg", seg)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["class", "threshold", "dice_no_blank", "dice_at_0.5", "dice_tuned", "removed", "wrongly"]
    assert [line.split()[0] for line in lines[1:6]] == [*CLASSES, "mean"]
    assert f"{len(used)} validation images, robust choice" in result.output and "thresholds.json" in result.output
    assert load_gate(run / "thresholds.json").thresholds
    assert json.loads((run / "thresholds.json").read_text())["choice"] == "robust"
    result = run_cli("--run", run, "--data", tiny_data, "--seg", seg, "--choice", "best")
    assert result.exit_code == 0 and json.loads((run / "thresholds.json").read_text())["choice"] == "best"
    assert run_cli("--run", run, "--data", tiny_data, "--seg", seg, "--choice", "median").exit_code == 2

    result = run_cli("--run", run, "--data", tiny_data, "--plot", tmp_path / "acc.png", "--out", tmp_path / "acc.json")
    assert result.exit_code == 0, result.output
    assert "acc_tuned" in result.output and "not the competition metric" in result.output


def test_cli_bad_inputs(tiny_data, tuning_case, tmp_path):
    _, seg, probs, _ = tuning_case
    run = copy_run(tuning_case, tmp_path)
    other = tmp_path / "other.csv"  # predictions on training images outside the validation set
    outside = [i for i in presence(read_train(tiny_data)).index if i not in probs.index]
    frame = pd.DataFrame({"Image_Label": [join_label(i, c) for i in outside for c in CLASSES], "EncodedPixels": ""})
    frame.to_csv(other, index=False)
    partly = tmp_path / "partly.csv"  # validation images and images the classifier trained on
    pd.concat([pd.read_csv(seg, dtype=str, keep_default_na=False), frame]).to_csv(partly, index=False)
    unknown = tmp_path / "unknown.csv"
    pd.DataFrame({"Image_Label": [join_label("zzz.jpg", c) for c in CLASSES], "EncodedPixels": ""}).to_csv(unknown, index=False)
    broken = tmp_path / "broken.csv"
    broken.write_text("Image_Label,EncodedPixels\n" + "".join(f"{probs.index[0]}_{c},5 3 1 2\n" for c in CLASSES))
    no_probs = tmp_path / "empty_run"
    no_probs.mkdir()
    bad_probs = copy_run(tuning_case, tmp_path / "bad")
    (bad_probs / "val_probs.csv").write_text("image,Fish,Flower,Gravel,Sugar\na.jpg,0.1,0.2,0.3,2\n")
    cases = [
        (["--seg", other], "shares no image with the validation probabilities"),
        (["--seg", other], "give predict-seg --split val's CSV (RUN/val_seg.csv) of a segmentation run trained on the "
                           "classifier's split (the same --val-fraction"),
        (["--seg", tiny_data / "test_truth.csv"], "--seg wants validation masks: predict-seg --split val's CSV"),
        (["--seg", partly], "only 12 of its 20 images are validation images"),
        (["--seg", unknown], "train.csv lacks 1 image(s) of"),
        (["--seg", broken], "line 2"),
        (["--objective", "dice"], "needs segmentation predictions"),
        (["--seg", seg, "--out", seg], "also an input"),
        (["--seg", seg, "--out", tmp_path / "x.json", "--plot", tmp_path / "x.json"], "must differ"),
    ]
    for extra, message in cases:
        result = run_cli("--run", run, "--data", tiny_data, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:") and message in result.stderr, result.stderr
    stranger = copy_run(tuning_case, tmp_path / "stranger")
    write_probs(stranger / "val_probs.csv", probs.rename(index={probs.index[3]: "zzz.jpg"}))
    for run_dir, message in [(no_probs, "no config.yaml: not a training run folder"), (bad_probs, "line 2: Sugar probability"),
                             (stranger, "train.csv lacks 1 image(s) of")]:
        result = run_cli("--run", run_dir, "--data", tiny_data)
        assert result.exit_code == 2 and result.stderr.startswith("error:") and message in result.stderr, result.stderr
    assert not (run / "thresholds.json").exists()


def test_second_tuner_of_the_same_run_fails_at_once(tiny_data, tuning_case, tmp_path, dead_pid):
    run = copy_run(tuning_case, tmp_path)
    with output_lock(run / "thresholds.json"):
        result = CliRunner().invoke(main, ["tune-threshold", "--run", str(run), "--data", str(tiny_data)])
    assert result.exit_code == 2, result.output
    assert f"thresholds.json: is being written by another cloudpipe process (pid {os.getpid()})" in result.stderr
    assert sorted(p.name for p in run.iterdir()) == ["val_probs.csv"]
    lock_path(run / "thresholds.json").write_text(f"{dead_pid}\n")
    tune_thresholds(run, tiny_data)
    assert sorted(p.name for p in run.iterdir()) == ["thresholds.json", "thresholds.png", "val_probs.csv"]


def test_ensemble_of_classifier_runs(tiny_classifier_run, tiny_classifier_run_b, tiny_data, tmp_path):
    from cloudpipe.pipeline.ensemble import Ensemble
    from cloudpipe.pipeline.tune import ensemble_val_probs

    a, b = tiny_classifier_run, tiny_classifier_run_b
    pa, pb = read_probs_csv(a / "val_probs.csv"), read_probs_csv(b / "val_probs.csv")
    mean, source = ensemble_val_probs(Ensemble.of([a, b], [1, 3]), tiny_data, CPU)
    np.testing.assert_allclose(mean.to_numpy(), 0.25 * pa.to_numpy() + 0.75 * pb.loc[pa.index].to_numpy())
    assert "weighted mean (0.25, 0.75)" in source
    with pytest.raises(CloudpipeError, match="need --out FILE"):
        tune_thresholds([a, b], tiny_data)
    out = tmp_path / "ens.json"
    result = tune_thresholds([a, b], tiny_data, weights=[1, 3], files=ThresholdFiles(out))
    saved = json.loads(out.read_text())
    assert saved["runs"] == [str(a.resolve()), str(b.resolve())] and saved["weights"] == [0.25, 0.75]
    assert load_gate(out).thresholds == result.thresholds
    # Runs validated on other images are refused.
    other = tmp_path / "other"
    shutil.copytree(b, other)
    pb.iloc[1:].reset_index().to_csv(other / "val_probs.csv", index=False)
    with pytest.raises(CloudpipeError, match="validates on other images"):
        tune_thresholds([a, other], tiny_data, files=ThresholdFiles(tmp_path / "x.json"))
    assert not (tmp_path / "x.json").exists()


def test_tune_chooses_among_every_source_and_says_what_each_scores(tiny_data, tuning_case, tmp_path):
    from tests.conftest import write_store

    _, seg, probs, used = tuning_case
    run = copy_run(tuning_case, tmp_path)
    store = write_store(tmp_path / "val_seg_probs.npy", used, "val", seed=2)
    rng = np.random.default_rng(3)
    head = write_probs(tmp_path / "val_seg_presence.csv", pd.DataFrame(rng.random((len(used), 4)).round(4), index=used,
                                                                        columns=list(CLASSES)))
    out = tmp_path / "t.json"
    inputs = GateInputs({"presence": head, "seg_store": store}, placement="midpoint", try_at_least_one=True)
    result = tune_thresholds(run, tiny_data, seg=seg, inputs=inputs, files=ThresholdFiles(out), choice="best")
    names = {r["source"] for r in result.source_rows}
    assert {"classifier", "head", "max", "top_mean", "area", "0.5 classifier + 0.5 top_mean"} <= names
    alone = tune_thresholds(run, tiny_data, seg=seg, inputs=GateInputs({"presence": head, "seg_store": store}, sources=["area"]), files=None,
                            choice="best")
    for c in CLASSES:
        best = max(r[c] for r in result.source_rows)
        assert result.sweeps[c].score == pytest.approx(best)  # beats or equals every source and blend
        assert {r["source"]: r[c] for r in result.source_rows}["area"] == pytest.approx(alone.sweeps[c].score)
    data = json.loads(out.read_text())
    assert set(data["gate"]) == set(CLASSES) and data["placement"] == "midpoint"
    without, with_rule = result.rule_scores
    assert data["at_least_one"] == (with_rule > without) and "at least one class per image" in result.summary()
    classifier_only = tune_thresholds(run, tiny_data, seg=seg, files=None)
    assert all(g == {"classifier": 1.0} for g in classifier_only.spec.gates.values())
    with pytest.raises(CloudpipeError, match="--presence"):
        tune_thresholds(run, tiny_data, seg=seg, files=None, inputs=GateInputs(sources=["head"]))
    cli = CliRunner().invoke(main, ["tune-threshold", "--run", str(run), "--data", str(tiny_data), "--seg", str(seg),
                                    "--seg-store", str(store), "--out", str(tmp_path / "c.json"), "--sources", "classifier,max"])
    assert cli.exit_code == 0, cli.output
    assert "0.5 classifier + 0.5 max" in cli.output and "gated on:" in cli.output


def test_val_probs_of_a_partly_trained_k_fold_run(tiny_data, tmp_path):
    """Computed from the models, a K-fold run missing folds is refused; with allow_partial the
    finished folds' validation images are used."""
    import dataclasses

    from cloudpipe.data.runfolder import read_splits
    from cloudpipe.engine.settings import InferenceSettings
    from cloudpipe.engine.train import train_run
    from cloudpipe.pipeline.tune import compute_val_probs
    from tests.conftest import tiny_config

    run = tmp_path / "run"
    train_run(tiny_config(folds=3), tiny_data, run, fold=1, progress=False)
    settings = InferenceSettings(device="cpu", workers=0, progress=False)
    with pytest.raises(CloudpipeError, match="fold0, fold2 have no best.pt"):
        compute_val_probs(run, tiny_data, settings)
    probs = compute_val_probs(run, tiny_data, dataclasses.replace(settings, allow_partial=True))
    assert list(probs.index) == read_splits(run, 3)[1].val


def test_robust_says_per_class_why_it_kept_no_gating(tiny_data, tuning_case, tmp_path):
    """On 8 validation images (the held-out check needs 10) robust keeps "no gating" for every
    class; it used to say nothing while its table showed 0.5 doing better."""
    _, seg, probs, used = tuning_case
    run = copy_run(tuning_case, tmp_path)
    few = pd.read_csv(seg, dtype=str, keep_default_na=False)
    few = few[few["Image_Label"].str.rsplit("_", n=1).str[0].isin(used[:8])]
    few.to_csv(tmp_path / "few.csv", index=False)
    result = run_cli("--run", run, "--data", tiny_data, "--seg", tmp_path / "few.csv", "--out", tmp_path / "t.json")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:6]}
    costly = [c for c in CLASSES if float(rows[c][3]) > float(rows[c][2])]  # 0.5 beats no gating in the table
    assert costly, result.output
    for c in costly:
        assert rows[c][1] == "0.0000"
        [line] = [line for line in result.output.splitlines() if line.startswith(f"{c}: kept no gating")]
        assert "(threshold 0) over threshold" in line and "in-sample gain +" in line
        assert line.endswith("too few images to check it on held-out ones (8 < 10)"), line
