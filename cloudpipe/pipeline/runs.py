"""``cloudpipe runs DIR``: the training runs under a folder, their best scores and how their
configs differ (read from ``config.yaml`` and ``metrics.csv``; no torch, no checkpoints)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.kaggle import require_dir
from cloudpipe.data.runfolder import CONFIG_YAML, METRICS_CSV, model_dirs, read_config_values

SCORE_NAMES = {"classifier": "val_accuracy", "segmentation": "val_dice"}
"""The column of ``metrics.csv`` each stage keeps its best model by (the stages' ``score_name``)."""


@dataclass
class RunSummary:
    """One run folder: its config and what its models reached."""

    path: Path
    config: dict
    best: float
    """The best validation score (K folds: the mean of the folds' best; NaN before an epoch ended)."""
    epochs: str
    """Epochs trained of those asked (``3/20``; K folds: the folds that have trained any, ``2/5 folds``)."""


def summarise(run_dir: Path) -> RunSummary:
    """:class:`RunSummary` of one run folder.

    Raises:
        CloudpipeError: an unreadable config or metrics file.
    """
    config = read_config_values(run_dir)
    score = SCORE_NAMES.get(str(config.get("task")), "")
    folds = int(config.get("folds") or 0)
    bests, trained = [], []
    for folder in model_dirs(run_dir, folds):
        path = folder / METRICS_CSV
        if not path.is_file():
            continue
        try:
            metrics = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as err:
            raise CloudpipeError(f"cannot read ({str(err).splitlines()[0]})", path=path) from None
        if score in metrics and len(metrics):
            bests.append(float(metrics[score].max()))
            trained.append(len(metrics))
    best = sum(bests) / len(bests) if bests else math.nan
    if folds >= 2:
        epochs = f"{len(trained)}/{folds} folds"
    else:
        epochs = f"{trained[0] if trained else 0}/{config.get('epochs', '?')}"
    return RunSummary(Path(run_dir), config, best, epochs)


def find_runs(root: Path) -> list[RunSummary]:
    """Every run folder under ``root`` (a folder holding ``config.yaml``, its own included), in
    path order.

    Raises:
        CloudpipeError: no such folder, no run in it, or a run whose files cannot be read.
    """
    root = require_dir(root)
    found = sorted(p.parent for p in root.rglob(CONFIG_YAML))
    runs = [summarise(p) for p in found]
    if not runs:
        raise CloudpipeError(f"no training run ({CONFIG_YAML}) under this folder", path=root)
    return runs


def differing_keys(configs: list[dict]) -> list[str]:
    """The config keys whose values are not the same in every config (``task`` aside), in
    the order they first appear."""
    keys = list(dict.fromkeys(k for c in configs for k in c if k != "task"))
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def runs_table(root: Path) -> list[dict]:
    """One row per run under ``root``: its path (relative to ``root``), task, score name, best
    score, epochs, and the value of every config key that differs between the runs."""
    runs = find_runs(root)
    keys = differing_keys([r.config for r in runs])

    def shown(value) -> str:
        if isinstance(value, dict):
            return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        if isinstance(value, list):
            return ("x" if all(isinstance(v, int) for v in value) else ",").join(map(str, value)) or "-"
        return "-" if value is None else str(value)

    rows = []
    for r in runs:
        name = r.path.relative_to(Path(root)).as_posix() if r.path != Path(root) else "."
        rows.append({"run": name, "task": r.config.get("task", "?"), "score": SCORE_NAMES.get(str(r.config.get("task")), "?"),
                     "best": r.best, "epochs": r.epochs, **{k: shown(r.config.get(k)) for k in keys}})
    return rows
