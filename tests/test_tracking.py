"""TensorBoard event files of a training run: scalars per epoch, seg overlays, off by config."""

from __future__ import annotations

import numpy as np
import pytest

from cloudpipe.engine.tracking import class_grid
from tests.conftest import train_tiny


def read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def test_metrics_columns_become_tags_grouped_by_metric_the_same_way_for_every_metric():
    """Each metric's mean under val/<metric>, its classes under <metric>/<class> (the classifier's
    AUC per class was tagged auc_Fish beside val/auc); the epoch is the step."""
    from cloudpipe.engine.stages import ClassifierStage, SegmentationStage
    from cloudpipe.engine.tracking import scalar_tags

    row = {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.7, "val_Fish": 0.8, "val_auc": 0.9,
           "auc_Fish": 0.4, "lr": 1e-3, "seconds": 3}
    assert scalar_tags(row, ClassifierStage.metric_columns) == {
        "loss/train": 0.5, "loss/val": 0.6, "val/accuracy": 0.7, "accuracy/Fish": 0.8, "val/auc": 0.9, "auc/Fish": 0.4,
        "lr": 1e-3, "seconds": 3.0}
    seg = {"val_dice": 0.3, "val_Sugar": 0.2, "val_head_accuracy": 0.6}
    assert scalar_tags(seg, SegmentationStage.metric_columns) == {"val/dice": 0.3, "dice/Sugar": 0.2, "val/head_accuracy": 0.6}


def test_the_tracker_writes_plain_values_and_images_and_imports_nothing_of_the_training_loop(tmp_path):
    import ast
    import inspect

    import cloudpipe.engine.tracking as tracking
    from cloudpipe.engine.tracking import Tracker

    imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(tracking))) if isinstance(node, ast.ImportFrom)}
    assert "cloudpipe.engine.train" not in imported  # it reached into the Trainer (an import circle at type level)
    tracker = Tracker(tmp_path, start_epoch=0)
    tracker.log(1, {"val/dice": 0.25}, [np.zeros((4, 6, 3), np.uint8)])
    tracker.close()
    events = read_events(tmp_path / "tensorboard")
    assert [e.value for e in events.Scalars("val/dice")] == [0.25] and events.Images("val_masks/0")[0].width == 6


def test_class_grid_places_the_classes_two_by_two_with_truth_green_and_prediction_red():
    image = np.zeros((2, 3, 3), np.uint8)
    truth, pred = np.zeros((4, 2, 3), np.uint8), np.zeros((4, 2, 3), np.uint8)
    truth[1, 0, 0] = 1  # Flower: top right panel
    pred[2, 1, 2] = 1  # Gravel: bottom left panel
    grid = class_grid(image, truth, pred)
    assert grid.shape == (4, 6, 3) and grid.dtype == np.uint8
    assert tuple(grid[0, 3]) == (0, 114, 0) and tuple(grid[3, 2]) == (114, 0, 0)
    assert grid.sum() == 2 * 114


def test_a_segmentation_run_writes_every_epochs_scalars_and_overlays(tiny_data, tmp_path):
    run = train_tiny(tiny_data, tmp_path / "seg", "segmentation", epochs=2, image_size=(32, 64))
    events = read_events(run / "tensorboard")
    tags = events.Tags()
    assert {"loss/train", "loss/val", "lr", "val/dice", "dice/Fish", "dice/Sugar"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss/train")] == [1, 2]
    metrics = np.genfromtxt(run / "metrics.csv", delimiter=",", names=True)
    assert np.allclose([e.value for e in events.Scalars("val/dice")], metrics["val_dice"], atol=1e-5)
    assert {"val_masks/0", "val_masks/1"} <= set(tags["images"])
    assert events.Images("val_masks/0")[-1].height == 2 * 32


def test_each_fold_has_its_events_and_tensorboard_false_writes_none(tiny_data, tmp_path):
    run = train_tiny(tiny_data, tmp_path / "folds", folds=2)
    for fold in ("fold0", "fold1"):
        tags = set(read_events(run / fold / "tensorboard").Tags()["scalars"])
        assert {"val/accuracy", "accuracy/Fish", "val/auc", "auc/Fish"} <= tags
        assert not [t for t in tags if "_" in t]  # one scheme: no metrics.csv column name left as a tag
    quiet = train_tiny(tiny_data, tmp_path / "off", tensorboard=False)
    assert (quiet / "best.pt").exists() and not (quiet / "tensorboard").exists()


def test_the_clock_counts_folds_and_estimates_the_whole_run():
    from cloudpipe.engine.tracking import RunClock, duration

    assert [duration(s) for s in (5, 125, 3 * 3600 + 7 * 60 + 9)] == ["5s", "2m05s", "3h07m"]
    clock = RunClock(folds=3, epochs_left=3 * 4)
    clock.begin(0, 4)  # fold 0 finished before an interruption
    clock.begin(1, 1)  # fold 1 resumed after its first epoch
    assert clock.tick(10.0) == ("fold 2/3  ", "  eta 1m00s")  # 2 + 4 epochs left at 10 s
    assert clock.tick(20.0) == ("fold 2/3  ", "  eta 1m15s")  # 1 + 4 left at 15 s
    clock.tick(15.0)
    clock.begin(2, 0)
    for _ in range(3):
        clock.tick(15.0)
    assert clock.tick(15.0) == ("fold 3/3  ", "")
    assert RunClock(folds=0, epochs_left=2).tick(3.0) == ("", "  eta 3s")


def test_a_kfold_runs_epoch_lines_say_the_fold_and_the_time_left(tiny_data, tmp_path):
    import logging

    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # the library's own lines, however other tests left the root logger
    logger = logging.getLogger("cloudpipe")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        train_tiny(tiny_data, tmp_path / "run", folds=2, epochs=2, tensorboard=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [r.getMessage() for r in records]
    assert [line.split("  train_loss")[0] for line in lines] == ["fold 1/2  epoch 1/2", "fold 1/2  epoch 2/2",
                                                                 "fold 2/2  epoch 1/2", "fold 2/2  epoch 2/2"]
    assert all(" eta " in line for line in lines[:3]) and " eta " not in lines[3]


def test_keep_last_false_leaves_best_pt_only_and_a_continued_run_keeps_it(tiny_data, tmp_path):
    from cloudpipe.core.errors import CloudpipeError
    from cloudpipe.engine.train import train_run
    from tests.conftest import tiny_config

    run = train_tiny(tiny_data, tmp_path / "run", folds=2, keep_last=False, tensorboard=False)
    assert not list(run.rglob("last.pt")) and (run / "fold0" / "best.pt").exists() and (run / "fold1" / "best.pt").exists()
    before = (run / "fold0" / "best.pt").read_bytes()
    assert train_run(tiny_config(folds=2, keep_last=False, tensorboard=False), tiny_data, run, resume=True, progress=False) == []
    assert (run / "fold0" / "best.pt").read_bytes() == before  # finished folds are not trained again
    with pytest.raises(CloudpipeError, match="has no last.pt to train further from"):
        train_run(tiny_config(folds=2, keep_last=False, tensorboard=False, epochs=3), tiny_data, run, resume=True, progress=False)
