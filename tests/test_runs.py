"""cloudpipe runs DIR: every run's best score and the config keys that differ between runs."""

from __future__ import annotations

import math
import shutil

import pandas as pd
import yaml

from cloudpipe.core.profile import packaged
from cloudpipe.data.profiles import profile_text
from cloudpipe.pipeline.runs import differing_keys, runs_table, summarise
from tests.conftest import cli, train_tiny


def test_values_are_shown_compactly(tiny_data, tmp_path):
    from cloudpipe.engine.config import load_config, save_config

    for name, overrides in (("a", {"freeze": [], "image_size": [64, 96]}), ("b", {"freeze": ["layer1"], "image_size": [32, 64]})):
        (tmp_path / name).mkdir()
        save_config(load_config("classifier", overrides=overrides), tmp_path / name / "config.yaml")
    rows = runs_table(tmp_path)
    assert [(r["freeze"], r["image_size"], r["trained"]) for r in rows] == [("-", "64x96", "0/30"), ("layer1", "32x64", "0/30")]
    assert all(math.isnan(r["best"]) for r in rows)  # no epoch ended yet


def test_differing_keys_keep_first_seen_order_and_leave_task_aside():
    assert differing_keys([{"task": "a", "lr": 1, "seed": 2, "x": [1]}, {"task": "b", "lr": 1, "seed": 3}]) == ["seed", "x"]


def test_runs_lists_hold_out_and_kfold_runs_with_their_best_and_differences(tiny_data, tiny_classifier_run, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(tiny_classifier_run, root / "classifier")
    train_tiny(tiny_data, root / "folds", folds=2, seed=7, tensorboard=False)
    (root / "empty").mkdir()
    rows = runs_table(root)
    assert [r["run"] for r in rows] == ["classifier", "folds"]
    first = summarise(root / "classifier")
    assert first.best == pd.read_csv(root / "classifier" / "metrics.csv")["val_accuracy"].max()
    assert rows[0]["trained"] == "1/1" and rows[1]["trained"] == "2/2 folds"
    fold_bests = [pd.read_csv(root / "folds" / f / "metrics.csv")["val_accuracy"].max() for f in ("fold0", "fold1")]
    assert math.isclose(rows[1]["best"], sum(fold_bests) / 2)
    assert rows[0]["seed"] == "69" and rows[1]["seed"] == "7" and rows[1]["folds"] == "2"
    assert "lr" not in rows[0]  # the same in both: not a difference
    result = cli("runs", "--root", root)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:5] == ["run", "task", "score", "best", "trained"] and "2 run(s) under" in lines[-1]
    assert lines[2].startswith("folds") and "2/2 folds" in lines[2]
    none = cli("runs", "--root", root / "empty")
    assert none.exit_code == 2 and "no training run (config.yaml) under this folder" in none.stderr


def test_a_classifier_kept_by_auc_shows_its_auc_the_stages_score(tiny_classifier_run, tmp_path):
    """runs showed val_accuracy (a copy of the stages' score names) for a run trained with best_by: auc."""
    run = shutil.copytree(tiny_classifier_run, tmp_path / "runs" / "auc")
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "best_by": "auc"}))
    [row] = runs_table(tmp_path / "runs")
    assert row["score"] == "val_auc"
    assert row["best"] == pd.read_csv(run / "metrics.csv")["val_auc"].max()


def _with(run, tmp_path, name, **values):
    """A copy of ``run`` whose config.yaml has ``values`` set."""
    copy = shutil.copytree(run, tmp_path / "runs" / name)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    (copy / "config.yaml").write_text(yaml.safe_dump({**config, **values}))
    return copy


def test_one_odd_run_is_a_row_saying_what_is_wrong_and_the_others_still_show(tiny_classifier_run, tmp_path):
    """A non-string key, folds: abc, text in a metric column crashed runs; folds: 100000000 hung it
    (10^8 paths built); an unreadable config stopped the whole command."""
    shutil.copytree(tiny_classifier_run, tmp_path / "runs" / "good")
    _with(tiny_classifier_run, tmp_path, "folds_abc", folds="abc")
    _with(tiny_classifier_run, tmp_path, "folds_huge", folds=100_000_000)
    _with(tiny_classifier_run, tmp_path, "task_odd", task="detector")
    key = _with(tiny_classifier_run, tmp_path, "key")
    key.joinpath("config.yaml").write_text(key.joinpath("config.yaml").read_text() + "1: 2\n")
    text = _with(tiny_classifier_run, tmp_path, "text")
    metrics = pd.read_csv(text / "metrics.csv").astype({"val_accuracy": object})
    metrics.loc[0, "val_accuracy"] = "abc"
    metrics.to_csv(text / "metrics.csv", index=False)
    (tmp_path / "runs" / "unreadable").mkdir()
    (tmp_path / "runs" / "unreadable" / "config.yaml").write_text("[1, 2\n")
    result = cli("runs", "--root", tmp_path / "runs")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    rows = {r["run"]: r for r in runs_table(tmp_path / "runs")}
    assert rows["good"]["problem"] == "-" and rows["good"]["best"] == pd.read_csv(tiny_classifier_run / "metrics.csv")["val_accuracy"].max()
    problems = {name: r["problem"] for name, r in rows.items() if name != "good"}
    assert problems == {
        "folds_abc": "config.yaml: folds 'abc' is not a whole number in 0..1000",
        "folds_huge": "config.yaml: folds 100000000 is not a whole number in 0..1000",
        "task_odd": "config.yaml: task 'detector' with best_by 'score' is no stage's score (tasks: classifier, segmentation)",
        "key": "config.yaml: key 1 is not a setting's name",
        "text": "metrics.csv, line 2: val_accuracy is not a number ('abc')",
        "unreadable": problems["unreadable"],
    }
    assert problems["unreadable"].startswith("config.yaml: cannot read the run's config")
    assert all(math.isnan(rows[name]["best"]) for name in problems)
    assert len(result.output.splitlines()) == 2 + len(rows) and "7 run(s) under" in result.output


def test_the_epochs_asked_keep_their_column_and_a_setting_no_stage_reads_shows_as_unset(tmp_path):
    """The config's epochs overwrote the trained/asked column when runs differed in it; a
    classifier showed the segmentation model's encoder."""
    from cloudpipe.engine.config import load_config, save_config

    for name, task, overrides in (("cls", "classifier", {"epochs": 3}), ("seg", "segmentation", {"epochs": 5, "encoder": "resnet18"})):
        (tmp_path / name).mkdir()
        save_config(load_config(task, overrides=overrides), tmp_path / name / "config.yaml")
    rows = runs_table(tmp_path)
    assert [(r["trained"], r["epochs"], r["encoder"]) for r in rows] == [("0/3", "3", "-"), ("0/5", "5", "resnet18")]
    assert [r["score"] for r in rows] == ["val_accuracy", "val_dice"]


def test_runs_of_different_profiles_show_their_profiles(tiny_classifier_run, tmp_path):
    """The profile is a column once runs differ in it; an unreadable profile.yaml is that run's problem."""
    shutil.copytree(tiny_classifier_run, tmp_path / "runs" / "clouds")
    steel = shutil.copytree(tiny_classifier_run, tmp_path / "runs" / "steel")
    (steel / "profile.yaml").write_text(profile_text(packaged("steel")))
    assert [(r["run"], r["profile"]) for r in runs_table(tmp_path / "runs")] == [("clouds", "clouds"), ("steel", "steel")]
    (steel / "profile.yaml").write_text("classes: 3\n")
    rows = runs_table(tmp_path / "runs")
    assert "profile" not in rows[0] and rows[1]["problem"] == "profile.yaml: profile: name: missing (must be a short name without spaces)"
