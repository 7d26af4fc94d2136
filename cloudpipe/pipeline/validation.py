"""The validation images of a run, as its training recorded them, with the training data."""

from __future__ import annotations

from pathlib import Path

from cloudpipe.data.kaggle import TrainData, load_train_data, require_images
from cloudpipe.data.runfolder import SPLITS_CSV, ModelSplit, read_splits
from cloudpipe.engine.config import Task, load_run_config


def validation_sets(run_dir: Path, data_dir: Path, task: Task) -> tuple[TrainData, list[ModelSplit]]:
    """The training data of ``data_dir`` and, per model of the run, its folder and the images
    it trained and validated on, from ``RUN/splits.csv`` (refused: not a ``task`` run, or
    recorded images that ``train.csv`` does not have)."""
    config = load_run_config(run_dir, task)
    data = load_train_data(data_dir)
    splits = read_splits(run_dir, config.folds)
    require_images((i for s in splits for i in s.val), set(data.labels.index), f"{data_dir}/train.csv",
                   "the run's validation", path=Path(run_dir) / SPLITS_CSV, hint=": another data folder?")
    return data, splits
