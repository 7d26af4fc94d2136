"""A training run's folder, owned here: every file name, the fold layout, and the split the
run trained on.

```
RUN/config.yaml        the resolved config          RUN/splits.csv     image,fold (see below)
RUN/profile.yaml       the data's profile (classes, sizes, layouts: cloudpipe.core.profile)
RUN/best.pt, last.pt   checkpoints (hold-out run)   RUN/fold{i}/...    one model per fold
RUN/metrics.csv        one row per epoch            RUN/val_probs.csv  validation probabilities
RUN/thresholds.json    tune-threshold's choice      RUN/seg_postprocess.json  predict-seg's choice
```

``splits.csv`` is written by training and read back by everything that needs the validation
images, so they are the images the run really held out, whatever ``train.csv`` or the split
code do later. Its ``fold`` is the model folder whose validation set holds the image: ``0``..
``K-1`` for a K-fold run; ``0`` for the validation images of a hold-out run, and empty for its
training images.

Light on purpose (no torch import), so commands that only read a run's files start fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.outputs import Inputs, check_plain_path, write_csv

log = logging.getLogger(__name__)

CONFIG_YAML = "config.yaml"
METRICS_CSV = "metrics.csv"
VAL_PROBS_CSV = "val_probs.csv"
SPLITS_CSV = "splits.csv"
BEST_PT = "best.pt"
LAST_PT = "last.pt"
THRESHOLDS_JSON = "thresholds.json"
THRESHOLDS_PNG = "thresholds.png"
POSTPROCESS_JSON = "seg_postprocess.json"
FOLD_PREFIX = "fold"
PROFILE_YAML = "profile.yaml"
"""The profile a run trained on (:mod:`cloudpipe.data.profiles`); a data folder's, beside its ``train.csv``."""
TENSORBOARD_DIR = "tensorboard"
"""A model folder's TensorBoard event files (``tensorboard: true``)."""


RUN_FILES = (CONFIG_YAML, PROFILE_YAML, SPLITS_CSV, VAL_PROBS_CSV)
"""What training writes in the run folder itself (``val_probs.csv``: out-of-fold, K folds)."""
MODEL_FILES = (BEST_PT, LAST_PT, METRICS_CSV, VAL_PROBS_CSV)
"""What training writes in each model folder (the run's, or each fold's), besides ``tensorboard/``."""
TRAINING_FILES = (CONFIG_YAML, PROFILE_YAML, METRICS_CSV, VAL_PROBS_CSV, SPLITS_CSV, BEST_PT, LAST_PT, THRESHOLDS_JSON, POSTPROCESS_JSON)
"""What training and tuning keep in a run folder (and its fold folders): never a command's --out."""


def training_files(run_dir: Path) -> list[Path]:
    """The paths of a run's own files (:data:`TRAINING_FILES`, the threshold plot, in the run
    and its fold folders), existing or not: what a command that reads the run must not write.
    Anything else in the folder (e.g. an earlier ``val_seg.csv``) is a user's output."""
    folders = [Path(run_dir), *(p for p in Path(run_dir).glob(f"{FOLD_PREFIX}*") if p.is_dir())]
    names = (*TRAINING_FILES, THRESHOLDS_PNG)
    return [folder / name for folder in folders for name in names]


def check_training_paths(run_dir: Path, model_folders: Iterable[Path], tensorboard: bool = True) -> None:
    """Refuse, before training does any work, a run folder where training would write through a
    symbolic link or find a file where it makes a folder: the run folder, each of
    ``model_folders``, their ``tensorboard/`` (when ``tensorboard``) and every file training
    writes in them (:data:`RUN_FILES`, :data:`MODEL_FILES`), naming the first such path
    (:func:`~cloudpipe.data.outputs.check_plain_path`); nothing is written."""
    check_plain_path(run_dir, folder=True)
    for name in RUN_FILES:
        check_plain_path(Path(run_dir) / name)
    for folder in map(Path, model_folders):
        check_plain_path(folder, folder=True)
        for name in MODEL_FILES:
            check_plain_path(folder / name)
        if tensorboard:
            check_plain_path(folder / TENSORBOARD_DIR, folder=True)


def run_inputs(run_dirs: Iterable[Path], writes: Iterable[Path] = ()) -> Inputs:
    """Run folders as a command that reads them sees them: every one of the runs' own files
    (:func:`training_files`) is an input, except ``writes``, the run files the command itself
    writes (``tune-threshold``'s ``RUN/thresholds.json``, for one)."""
    own = {Path(p).resolve() for p in writes}
    return Inputs.of(*(p for run in run_dirs for p in training_files(run) if p.resolve() not in own))


@dataclass(frozen=True)
class ModelSplit:
    """One model of a run: its folder and the images it trained and validated on."""

    folder: Path
    train: list[str]
    val: list[str]


def fold_dir(run_dir: Path, fold: int) -> Path:
    """The folder of fold ``fold``'s model: ``RUN/fold{i}``."""
    return Path(run_dir) / f"{FOLD_PREFIX}{fold}"


def model_dirs(run_dir: Path, folds: int) -> list[Path]:
    """The model folders of a run: ``[RUN]`` for a hold-out run, else ``RUN/fold{i}``."""
    return [Path(run_dir)] if folds < 2 else [fold_dir(run_dir, i) for i in range(folds)]


def trained_checkpoints(run_dir: Path, allow_partial: bool = False) -> list[Path]:
    """``RUN/best.pt``, or every ``RUN/fold{i}/best.pt`` of a K-fold run (in fold order).

    A K-fold run (``folds`` in its ``config.yaml``) must have every fold's model (else a
    CloudpipeError naming the others), unless ``allow_partial``: then the folds that have one
    are used, with a warning. No folder, or no finished model in it, is a CloudpipeError.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CloudpipeError("run folder not found", path=run_dir)
    if (run_dir / BEST_PT).exists():
        return [run_dir / BEST_PT]
    found = _fold_checkpoints(run_dir)
    if not found:
        raise CloudpipeError(f"no {BEST_PT} (nor {FOLD_PREFIX}*/{BEST_PT}): not a finished training run", path=run_dir)
    folds = _folds_of(run_dir)
    missing = [fold_dir(run_dir, i).name for i in range(folds) if i not in {index for index, _ in found}]
    if missing:
        what = (f"a {folds}-fold run with {len(found)} fold model(s): {', '.join(missing)} "
                f"{'has' if len(missing) == 1 else 'have'} no {BEST_PT}")
        if not allow_partial:
            raise CloudpipeError(f"{what}; train them (--resume, or --fold I), or pass --allow-partial to use "
                                 f"the {len(found)} there are", path=run_dir)
        log.warning(f"warning: {run_dir}: {what}; using the {len(found)} there are (--allow-partial)")
    return [path for _, path in sorted(found)]


def _fold_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(i, RUN/fold{i}/best.pt)`` of the folds that have one."""
    found = []
    for path in run_dir.glob(f"{FOLD_PREFIX}*/{BEST_PT}"):
        index = path.parent.name.removeprefix(FOLD_PREFIX)
        if index.isdigit():
            found.append((int(index), path))
    return found


MAX_FOLDS = 1000
"""The most fold models a run's files are looked for (a count read from a file builds no more paths)."""


def folds_value(value: object) -> int | None:
    """A ``folds`` read from a run's ``config.yaml``: the whole number it is (0 or 1: a hold-out
    run), or None when it is none, negative or above :data:`MAX_FOLDS`."""
    valid = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_FOLDS
    return value if valid else None


def _folds_of(run_dir: Path) -> int:
    """The ``folds`` a run's ``config.yaml`` says it trains (0 when it cannot tell)."""
    try:
        folds = folds_value(read_config_values(run_dir).get("folds", 0))
    except CloudpipeError:
        return 0
    return folds if folds is not None and folds >= 2 else 0


def run_fingerprint(run_dir: Path) -> str:
    """What a run is, whatever folder it lies in: the sha256 of the names and bytes of its
    ``config.yaml``, ``splits.csv``, ``val_probs.csv`` and finished checkpoints (``best.pt``, or
    every fold's, in fold order), those it has. A moved, copied or uploaded run keeps it;
    another run put in its place, or the same run trained further, does not.

    Raises:
        CloudpipeError: no such folder, none of these files, or one that cannot be read.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CloudpipeError("run folder not found", path=run_dir)
    best = run_dir / BEST_PT
    checkpoints = [best] if best.exists() else [path for _, path in sorted(_fold_checkpoints(run_dir))]
    files = [p for p in (run_dir / CONFIG_YAML, run_dir / SPLITS_CSV, run_dir / VAL_PROBS_CSV) if p.is_file()] + checkpoints
    if not files:
        raise CloudpipeError(f"neither {CONFIG_YAML}, {VAL_PROBS_CSV} nor {BEST_PT}: not a training run", path=run_dir)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(run_dir)).encode() + b"\0")
        try:
            with open(path, "rb") as file:
                digest.update(hashlib.file_digest(file, "sha256").digest())
        except OSError as err:
            raise CloudpipeError(f"cannot read ({err.strerror or err})", path=path) from None
    return digest.hexdigest()


def make_model_splits(run_dir: Path, images: list[str], pairs: list[tuple[list[str], list[str]]]) -> list[ModelSplit]:
    """Per model, its folder and (train, val) images (``pairs``, in any order), each list in the
    order of ``images`` (``train.csv``'s): the lists :func:`read_splits` gives back once they are
    written, so a resumed run sees its images in the order the first run did."""
    out = []
    for folder, (train, val) in zip(model_dirs(run_dir, len(pairs) if len(pairs) > 1 else 0), pairs):
        train_set, val_set = set(train), set(val)
        out.append(ModelSplit(folder, [i for i in images if i in train_set], [i for i in images if i in val_set]))
    return out


def write_splits(run_dir: Path, images: list[str], splits: list[ModelSplit]) -> Path:
    """Record which images (every training image, in ``train.csv`` order) each model of the
    run (``splits``, in fold order) validates on: ``RUN/splits.csv``."""
    fold = pd.Series("", index=pd.Index(images, name="image"), dtype=object)
    for i, split in enumerate(splits):
        fold[split.val] = str(i)
    path = Path(run_dir) / SPLITS_CSV
    write_csv(fold.rename("fold").reset_index(), path)
    return path


def read_splits(run_dir: Path, folds: int) -> list[ModelSplit]:
    """Per model of the run, its folder and the images it trained and validated on, as the
    training run recorded them in ``RUN/splits.csv``.

    Raises:
        CloudpipeError: no ``splits.csv`` (a run from an older cloudpipe), or one that does not
            match the run's number of models.
    """
    path = Path(run_dir) / SPLITS_CSV
    if not path.is_file():
        raise CloudpipeError(f"no {SPLITS_CSV} (training records the run's split there): not a training run", path=run_dir)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise CloudpipeError(f"cannot read ({str(err).strip().splitlines()[-1]})", path=path) from None
    if list(frame.columns) != ["image", "fold"]:
        raise CloudpipeError("columns must be image,fold", path=path, line=1)
    dirs = model_dirs(run_dir, folds)
    known = {str(i) for i in range(len(dirs))}
    bad = ~frame["fold"].isin(known | {""})  # "": validated by no model (hold-out training images, pseudo-labels)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise CloudpipeError(f"fold {frame['fold'].iat[i]!r} is not a model of this run", path=path, line=i + 2)
    images = frame["image"].to_numpy()
    return [ModelSplit(folder, list(images[frame["fold"] != str(i)]), list(images[frame["fold"] == str(i)]))
            for i, folder in enumerate(dirs)]


def read_config_values(run_dir: Path) -> dict:
    """The raw values of ``RUN/config.yaml`` (:func:`read_yaml_mapping`; no such file: a CloudpipeError)."""
    path = Path(run_dir) / CONFIG_YAML
    if not path.is_file():
        raise CloudpipeError(f"no {CONFIG_YAML}: not a training run folder", path=run_dir)
    return read_yaml_mapping(path, "the run's config")


YAML_LIMIT = 64 * 1024
"""The largest config file read, in bytes (a config is a few dozen ``key: value`` lines)."""


class _NoAliases(yaml.SafeLoader):
    """YAML's safe loader without aliases (``*name``): a config never needs them, and a few
    hundred bytes of nested aliases expand to gigabytes (a "billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError(f"aliases (*name) are not allowed; line {self.peek_event().start_mark.line + 1}")
        return super().compose_node(parent, index)


def yaml_value(text: str) -> object:
    """``text`` read as YAML the way a config file is read: safely, without aliases.

    Raises:
        yaml.YAMLError: not YAML, or an alias. RecursionError: nested deeper than the parser goes.
    """
    return yaml.load(text, Loader=_NoAliases)


def read_yaml_mapping(path: Path, what: str = "config") -> dict:
    """A small YAML file that must hold a mapping, read safely: at most :data:`YAML_LIMIT`
    bytes, no aliases, no Python tags (anything else is a CloudpipeError)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(YAML_LIMIT + 1)
        if len(raw) > YAML_LIMIT:
            raise CloudpipeError(f"cannot read {what}: larger than {YAML_LIMIT // 1024} KiB (a config is a short "
                                 "list of key: value lines)", path=path)
        values = yaml_value(raw.decode("utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CloudpipeError(f"cannot read {what} ({reason})", path=path) from None
    if not isinstance(values, dict):
        raise CloudpipeError(f"{what} must be a YAML mapping of key: value", path=path)
    return values


JSON_LIMIT = 64 * 1024 * 1024
"""The largest JSON file read, in bytes (a store's list of a million image names is ~20 MB; a
tuned file is a few KB)."""


def read_json(path: Path, what: str, missing: str | None = None) -> object:
    """A parsed JSON file of at most :data:`JSON_LIMIT` bytes, refused before it is read when
    larger (``what`` names it in the error; ``missing``, when given, is the error of a missing
    file); a missing, unreadable or non-JSON file is a CloudpipeError too."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            too_large = f"cannot read this {what} file: larger than {JSON_LIMIT // 2**20} MiB"
            if os.fstat(file.fileno()).st_size > JSON_LIMIT:
                raise CloudpipeError(too_large, path=path)
            raw = file.read(JSON_LIMIT + 1)
        if len(raw) > JSON_LIMIT:
            raise CloudpipeError(too_large, path=path)
        return json.loads(raw)
    except FileNotFoundError:
        raise CloudpipeError(missing or f"{what} file not found", path=path) from None
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: nested deeper than the parser goes
        raise CloudpipeError(f"not a readable JSON file ({err})", path=path) from None
