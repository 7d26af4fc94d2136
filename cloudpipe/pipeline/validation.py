"""The validation images of a run, as its training recorded them, with the training data."""

from __future__ import annotations

from pathlib import Path

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.kaggle import TrainData, load_train_data
from cloudpipe.data.runfolder import SPLITS_CSV, ModelSplit, read_splits
from cloudpipe.engine.config import Task, load_run_config


def validation_sets(run_dir: Path, data_dir: Path, task: Task) -> tuple[TrainData, list[ModelSplit]]:
    """The training data of ``data_dir`` and, per model of the run, its folder and the images
    it trained and validated on (out-of-fold with folds), from ``RUN/splits.csv``.

    Raises:
        CloudpipeError: not a ``task`` run, no ``splits.csv``, or recorded images that
            ``train.csv`` does not have.
    """
    config = load_run_config(run_dir, task)
    data = load_train_data(data_dir)
    splits = read_splits(run_dir, config.folds)
    known = set(data.labels.index)
    missing = [i for s in splits for i in s.val if i not in known]
    if missing:
        raise CloudpipeError(f"the run validated on {len(missing)} image(s) that {data_dir}/train.csv lacks "
                             f"(e.g. {', '.join(missing[:3])}): another data folder?", path=Path(run_dir) / SPLITS_CSV)
    return data, splits
