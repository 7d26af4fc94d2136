"""``cloudpipe runs --root DIR``: the training runs under a folder, their best scores and how their
configs differ (read from ``config.yaml`` and ``metrics.csv``; no torch, no checkpoints). Which
column holds a run's score and which settings its stage reads are the stage's
(:mod:`cloudpipe.engine.stages`). A run whose files cannot be read, or hold what no run writes,
is one row saying what is wrong; the other runs still show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.kaggle import require_dir
from cloudpipe.data.profiles import run_profile
from cloudpipe.data.runfolder import CONFIG_YAML, MAX_FOLDS, METRICS_CSV, folds_value, model_dirs, read_config_values
from cloudpipe.engine.stages import STAGES, score_name


@dataclass
class RunSummary:
    """One run folder: its config and what its models reached."""

    path: Path
    config: dict
    """The config values its stage reads (another stage's settings left out), and its ``profile``'s name."""
    score: str
    """The ``metrics.csv`` column that picks its ``best.pt`` (``?``: unknown)."""
    best: float
    """The best validation score (K folds: the mean of the folds' best; NaN before an epoch ended)."""
    trained: str
    """Epochs trained of those asked (``3/20``; K folds: the folds that have trained any, ``2/5 folds``)."""
    problem: str = ""
    """What is wrong with the run's files (empty: nothing); the other fields are then unknown."""


def summarise(run_dir: Path) -> RunSummary:
    """:class:`RunSummary` of one run folder; a run whose files cannot be read, or hold values
    no training writes, gets one whose :attr:`~RunSummary.problem` says what is wrong."""
    run_dir = Path(run_dir)
    try:
        return _summarise(run_dir)
    except CloudpipeError as err:
        return RunSummary(run_dir, {}, "?", math.nan, "?", str(err).removeprefix(f"{run_dir}/"))


def _summarise(run_dir: Path) -> RunSummary:
    """:func:`summarise` of a readable run (else a CloudpipeError saying what is wrong)."""
    config_path = run_dir / CONFIG_YAML
    config = read_config_values(run_dir)
    odd = [k for k in config if not isinstance(k, str)]
    if odd:
        raise CloudpipeError(f"key {odd[0]!r} is not a setting's name", path=config_path)
    task, best_by = config.get("task"), config.get("best_by", "score")
    score = score_name(task, best_by)
    if score is None:
        raise CloudpipeError(f"task {task!r} with best_by {best_by!r} is no stage's score (tasks: {', '.join(STAGES)})",
                             path=config_path)
    folds = folds_value(config.get("folds", 0))
    if folds is None:
        raise CloudpipeError(f"folds {config.get('folds')!r} is not a whole number in 0..{MAX_FOLDS}", path=config_path)
    found = [_best(folder / METRICS_CSV, score) for folder in model_dirs(run_dir, folds) if (folder / METRICS_CSV).is_file()]
    bests = [b for b in found if b is not None]  # (best score, epochs) of each model that has finished an epoch
    best = sum(b for b, _ in bests) / len(bests) if bests else math.nan
    epochs = f"{len(bests)}/{folds} folds" if folds >= 2 else f"{bests[0][1] if bests else 0}/{config.get('epochs', '?')}"
    used = {k: v for k, v in config.items() if k not in STAGES[task].unused_settings}
    return RunSummary(run_dir, {**used, "profile": run_profile(run_dir).name}, score, best, epochs)


def _best(path: Path, score: str) -> tuple[float, int] | None:
    """The best ``score`` in a ``metrics.csv`` and its number of epochs (None: no epoch, or no
    such column); an unreadable file, or a ``score`` that is not a number, is refused."""
    try:
        metrics = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise CloudpipeError(f"cannot read ({str(err).splitlines()[0]})", path=path) from None
    if score not in metrics or not len(metrics):
        return None
    values = pd.to_numeric(metrics[score], errors="coerce")
    text = values.isna() & metrics[score].notna()
    if text.any():
        row = int(text.to_numpy().argmax())
        raise CloudpipeError(f"{score} is not a number ({metrics[score].iat[row]!r})", path=path, line=row + 2)
    return float(values.max()), len(metrics)


def differing_keys(configs: list[dict]) -> list[str]:
    """The config keys whose values are not the same in every config (``task`` aside), in
    the order they first appear."""
    keys = list(dict.fromkeys(k for c in configs for k in c if k != "task"))
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def runs_table(root: Path) -> list[dict]:
    """One row per run under ``root``: its path (relative to ``root``), task, score name, best
    score, epochs trained (of those asked), the value of every config key that differs between
    the runs (``-``: not set, or not read by its stage) and, when a run has one, its problem.
    A run is a folder holding ``config.yaml`` (``root`` itself included)."""
    runs = [summarise(p) for p in sorted(p.parent for p in require_dir(root).rglob(CONFIG_YAML))]
    if not runs:
        raise CloudpipeError(f"no training run ({CONFIG_YAML}) under this folder", path=root)
    readable = [r.config for r in runs if not r.problem]  # a run with a problem shows none of its settings
    keys = [k for k in differing_keys(readable) if k not in ("run", "score", "best", "trained", "problem")]

    def shown(value) -> str:
        if isinstance(value, dict):
            return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        if isinstance(value, list):
            return ("x" if all(isinstance(v, int) for v in value) else ",").join(map(str, value)) or "-"
        return "-" if value is None else str(value)

    rows = []
    for r in runs:
        name = r.path.relative_to(Path(root)).as_posix() if r.path != Path(root) else "."
        rows.append({"run": name, "task": shown(r.config.get("task", "?")), "score": r.score, "best": r.best,
                     "trained": r.trained, **{k: shown(r.config.get(k)) for k in keys}})
        if any(s.problem for s in runs):
            rows[-1]["problem"] = r.problem or "-"
    return rows
