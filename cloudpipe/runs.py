"""A training run's folder: its file names, its saved config, and its validation split.

Light on purpose (no torch import), so commands that only read a run's files start fast.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from cloudpipe.config import Task, TrainConfig, config_from_dict
from cloudpipe.data import TrainData, kfold_splits, load_train_data, split_train_val
from cloudpipe.errors import CloudpipeError

CONFIG_YAML = "config.yaml"
METRICS_CSV = "metrics.csv"
VAL_PROBS_CSV = "val_probs.csv"


def make_splits(config: TrainConfig, labels: pd.DataFrame) -> list[tuple[list[str], list[str]]]:
    """The run's (train, val) image lists: one hold-out split, or ``config.folds`` folds."""
    if config.folds >= 2:
        return kfold_splits(labels, config.folds, config.split_seed)
    return [split_train_val(labels, config.val_fraction, config.split_seed)]


def load_run_config(run_dir: Path, task: Task) -> TrainConfig:
    """The resolved config a run saved in ``RUN_DIR/config.yaml``, checked to be a ``task`` run.

    Raises:
        CloudpipeError: no such file, unreadable YAML, invalid values, or the other stage.
    """
    path = Path(run_dir) / CONFIG_YAML
    if not path.is_file():
        raise CloudpipeError(f"no {CONFIG_YAML}: not a training run folder", path=run_dir)
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CloudpipeError(f"cannot read the run's config ({str(err).splitlines()[0]})", path=path) from None
    if not isinstance(values, dict):
        raise CloudpipeError("the run's config is not a YAML mapping", path=path)
    try:
        config = config_from_dict(values)
    except CloudpipeError as err:
        raise CloudpipeError(str(err), path=path) from None
    if config.task != task:
        raise CloudpipeError(f"a {config.task} run; this command needs a {task} run", path=path)
    return config


def validation_parts(run_dir: Path, data_dir: Path, task: Task) -> tuple[TrainData, list[tuple[Path, list[str]]]]:
    """The training data, and per model folder of the run its own validation images
    (``RUN_DIR`` and the hold-out images, or each ``fold{i}`` and its fold: out-of-fold)."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir, task)
    data = load_train_data(data_dir, check_masks=task == "segmentation")
    splits = make_splits(config, data.labels)
    if config.folds < 2:
        return data, [(run_dir, splits[0][1])]
    return data, [(run_dir / f"fold{i}", val) for i, (_, val) in enumerate(splits)]
