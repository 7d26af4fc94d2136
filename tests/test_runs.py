"""cloudpipe runs DIR: every run's best score and the config keys that differ between runs."""

from __future__ import annotations

import math
import shutil

import pandas as pd

from cloudpipe.engine.stages import STAGES
from cloudpipe.pipeline.runs import SCORE_NAMES, differing_keys, runs_table, summarise
from tests.conftest import cli, train_tiny


def test_the_score_names_are_the_stages():
    assert SCORE_NAMES == {task: stage.score_name for task, stage in STAGES.items()}


def test_values_are_shown_compactly(tiny_data, tmp_path):
    from cloudpipe.engine.config import load_config, save_config

    for name, overrides in (("a", {"freeze": [], "image_size": [64, 96]}), ("b", {"freeze": ["layer1"], "image_size": [32, 64]})):
        (tmp_path / name).mkdir()
        save_config(load_config("classifier", overrides=overrides), tmp_path / name / "config.yaml")
    rows = runs_table(tmp_path)
    assert [(r["freeze"], r["image_size"], r["epochs"]) for r in rows] == [("-", "64x96", "0/30"), ("layer1", "32x64", "0/30")]
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
    assert rows[0]["epochs"] == "1/1" and rows[1]["epochs"] == "2/2 folds"
    fold_bests = [pd.read_csv(root / "folds" / f / "metrics.csv")["val_accuracy"].max() for f in ("fold0", "fold1")]
    assert math.isclose(rows[1]["best"], sum(fold_bests) / 2)
    assert rows[0]["seed"] == "69" and rows[1]["seed"] == "7" and rows[1]["folds"] == "2"
    assert "lr" not in rows[0]  # the same in both: not a difference
    result = cli("runs", "--root", root)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:5] == ["run", "task", "score", "best", "epochs"] and "2 run(s) under" in lines[-1]
    assert lines[2].startswith("folds") and "2/2 folds" in lines[2]
    none = cli("runs", "--root", root / "empty")
    assert none.exit_code == 2 and "no training run (config.yaml) under this folder" in none.stderr
