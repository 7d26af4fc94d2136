"""The run folder: its file names, the fold layout and the recorded split."""

from __future__ import annotations

import os

import pytest

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.runfolder import (
    SPLITS_CSV,
    ModelSplit,
    fold_dir,
    make_model_splits,
    model_dirs,
    read_json,
    read_splits,
    run_fingerprint,
    trained_checkpoints,
    training_files,
    write_splits,
)

IMAGES = [f"{i}.jpg" for i in range(6)]


def test_model_dirs_and_checkpoints_in_fold_order(tmp_path):
    assert model_dirs(tmp_path, 0) == [tmp_path]
    assert model_dirs(tmp_path, 3) == [fold_dir(tmp_path, i) for i in range(3)] == [tmp_path / f"fold{i}" for i in range(3)]
    for i in (10, 2, 0):
        (tmp_path / f"fold{i}").mkdir()
        (tmp_path / f"fold{i}" / "best.pt").write_bytes(b"")
    (tmp_path / "foldx").mkdir()
    (tmp_path / "foldx" / "best.pt").write_bytes(b"")  # not a fold
    assert [p.parent.name for p in trained_checkpoints(tmp_path)] == ["fold0", "fold2", "fold10"]
    (tmp_path / "best.pt").write_bytes(b"")
    assert trained_checkpoints(tmp_path) == [tmp_path / "best.pt"]


def test_empty_folder_is_not_a_run(tmp_path):
    with pytest.raises(CloudpipeError, match="not a finished training run"):
        trained_checkpoints(tmp_path)
    with pytest.raises(CloudpipeError, match="run folder not found"):
        trained_checkpoints(tmp_path / "missing")


@pytest.mark.parametrize("pairs", [
    [(["5.jpg", "0.jpg", "3.jpg", "1.jpg"], ["4.jpg", "2.jpg"])],  # hold-out
    [(["5.jpg", "2.jpg", "3.jpg", "1.jpg"], ["4.jpg", "0.jpg"]), (["0.jpg", "4.jpg"], ["5.jpg", "2.jpg", "3.jpg", "1.jpg"])],
])
def test_splits_round_trip_in_train_csv_order(tmp_path, pairs):
    splits = make_model_splits(tmp_path, IMAGES, pairs)
    for split, (train, val) in zip(splits, pairs):
        assert split.train == sorted(train) and split.val == sorted(val)  # train.csv order
    write_splits(tmp_path, IMAGES, splits)
    folds = len(pairs) if len(pairs) > 1 else 0
    assert read_splits(tmp_path, folds) == splits
    assert all(isinstance(s, ModelSplit) for s in splits)


def test_hold_out_split_file_format(tmp_path):
    splits = make_model_splits(tmp_path, IMAGES, [(IMAGES[:4], IMAGES[4:])])
    write_splits(tmp_path, IMAGES, splits)
    assert (tmp_path / SPLITS_CSV).read_text().splitlines() == [
        "image,fold", "0.jpg,", "1.jpg,", "2.jpg,", "3.jpg,", "4.jpg,0", "5.jpg,0"]


def test_bad_or_missing_splits(tmp_path):
    with pytest.raises(CloudpipeError, match=r"no splits.csv \(training records the run.s split there\): not a training run"):
        read_splits(tmp_path, 0)
    (tmp_path / SPLITS_CSV).write_text("image,fold\na.jpg,0\nb.jpg,3\n")
    with pytest.raises(CloudpipeError, match=r"splits.csv, line 3: fold '3' is not a model of this run"):
        read_splits(tmp_path, 2)
    (tmp_path / SPLITS_CSV).write_text("image,split\na.jpg,0\n")
    with pytest.raises(CloudpipeError, match="columns must be image,fold"):
        read_splits(tmp_path, 0)


def test_read_json(tmp_path):
    (tmp_path / "a.json").write_text('{"x": 1}')
    assert read_json(tmp_path / "a.json", "thresholds") == {"x": 1}
    with pytest.raises(CloudpipeError, match="thresholds file not found"):
        read_json(tmp_path / "b.json", "thresholds")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(CloudpipeError, match="not a readable JSON file"):
        read_json(tmp_path / "c.json", "thresholds")


def test_read_json_refuses_a_huge_file_before_reading_it(tmp_path):
    huge = tmp_path / "thresholds.json"
    huge.touch()
    os.truncate(huge, 3 * 2**30)  # sparse: 3 GB that take no disk, and must not be read into memory
    with pytest.raises(CloudpipeError, match=f"{huge}: cannot read this thresholds file: larger than 64 MiB"):
        read_json(huge, "thresholds")


def test_training_files_cover_folds(tmp_path):
    (tmp_path / "fold1").mkdir()
    names = {str(p.relative_to(tmp_path)) for p in training_files(tmp_path)}
    assert {"best.pt", "last.pt", "config.yaml", "splits.csv", "metrics.csv", "thresholds.png", "fold1/last.pt"} <= names
    assert "val_seg.csv" not in names


def test_a_fingerprint_is_what_a_run_is_not_where_it_lies(tmp_path):
    run = tmp_path / "a"
    run.mkdir()
    for name, content in (("config.yaml", b"task: x\n"), ("splits.csv", b"image,fold\n"), ("best.pt", b"weights")):
        (run / name).write_bytes(content)
    before = run_fingerprint(run)
    (run / "metrics.csv").write_text("epoch\n1\n")  # not what the run is
    (run / "thresholds.json").write_text("{}")
    assert run_fingerprint(run) == before
    moved = tmp_path / "elsewhere" / "b"
    moved.parent.mkdir()
    run.rename(moved)
    assert run_fingerprint(moved) == before
    (moved / "best.pt").write_bytes(b"trained further")
    assert run_fingerprint(moved) != before
    with pytest.raises(CloudpipeError, match="not a training run"):
        run_fingerprint(tmp_path / "elsewhere")


def test_a_k_fold_run_missing_folds_is_refused_unless_partial_is_allowed(tmp_path, caplog):
    import logging

    from cloudpipe.data.runfolder import trained_checkpoints

    run = tmp_path / "run"
    (run / "fold0").mkdir(parents=True)
    (run / "fold0" / "best.pt").write_bytes(b"")
    (run / "config.yaml").write_text("folds: 3\n")
    with pytest.raises(CloudpipeError, match="a 3-fold run with 1 fold model.s.: fold1, fold2 have no best.pt; .*--allow-partial"):
        trained_checkpoints(run)
    with caplog.at_level(logging.WARNING, logger="cloudpipe"):
        assert trained_checkpoints(run, allow_partial=True) == [run / "fold0" / "best.pt"]
    assert "fold1, fold2 have no best.pt; using the 1 there are" in caplog.text
    for i in (1, 2):
        (run / f"fold{i}").mkdir()
        (run / f"fold{i}" / "best.pt").write_bytes(b"")
    assert len(trained_checkpoints(run)) == 3


def test_json_nested_deeper_than_the_parser_goes_is_one_line(tmp_path):
    from cloudpipe.data.probstore import read_store

    deep = tmp_path / "thresholds.json"
    deep.write_text("[" * 200000 + "]" * 200000)
    with pytest.raises(CloudpipeError, match="not a readable JSON file"):
        read_json(deep, "thresholds")
    (tmp_path / "x_probs.npy").write_bytes(b"")
    deep.rename(tmp_path / "x_probs.json")
    with pytest.raises(CloudpipeError, match="not a readable JSON file"):
        read_store(tmp_path / "x_probs.npy")
