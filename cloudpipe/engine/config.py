"""Training settings: YAML defaults -> command-line overrides -> validated, typed, saved.

One :class:`TrainConfig` serves both stages (``task: classifier`` or ``task: segmentation``);
the defaults live in ``configs/classifier.yaml`` and ``configs/seg.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cloudpipe.configs import DEFAULT_CONFIGS, read_packaged
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.outputs import write_text
from cloudpipe.data.runfolder import CONFIG_YAML, read_config_values

Task = Literal["classifier", "segmentation"]


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data folder; see configs/*.yaml."""

    task: Task = "classifier"
    arch: str = "resnet34"
    encoder: str = "resnet34"
    weights: str = "imagenet"
    freeze: list[str] = field(default_factory=lambda: ["layer1", "layer2"])
    image_size: tuple[int, int] = (512, 768)
    epochs: int = 30
    batch_size: int = 8
    accumulate: int = 4
    lr: float = 5e-3
    scratch_lr: float = 5e-4
    weight_decay: float = 0.0
    patience: int = 3
    val_fraction: float = 0.1
    split_seed: int = 69
    seed: int = 69
    folds: int = 0
    workers: int | Literal["auto"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    hflip: float = 0.5
    vflip: float = 0.5
    brightness_contrast: float = 0.5
    noise: float = 0.5
    head_weight: float = 0.0
    """Segmentation only: weight of a classification head's BCE in the loss (0: no head)."""
    head_dropout: float = 0.2

    def validate(self) -> TrainConfig:
        """Check every value; raise a CloudpipeError quoting the first bad one."""

        def bad(key: str, why: str) -> CloudpipeError:
            return CloudpipeError(f"config: {key} = {getattr(self, key)!r} {why}")

        if self.task not in DEFAULT_CONFIGS:
            raise bad("task", f"is not one of {', '.join(DEFAULT_CONFIGS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise bad("device", "is not one of auto, cpu, cuda")
        if len(self.image_size) != 2 or min(self.image_size) < 32 or any(s % 32 for s in self.image_size):
            raise bad("image_size", "must be two multiples of 32 (H W), each >= 32")
        for key in ("epochs", "batch_size", "accumulate"):
            if getattr(self, key) < 1:
                raise bad(key, "must be >= 1")
        if self.workers != "auto" and (isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0):
            raise bad("workers", "must be auto or a number >= 0")
        for key in ("patience", "folds"):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        if self.folds == 1:
            raise bad("folds", "must be 0 (one hold-out split) or >= 2")
        for key in ("lr", "scratch_lr"):
            if not 0 < getattr(self, key) < 10:
                raise bad(key, "must be in (0, 10)")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        if self.head_weight < 0:
            raise bad("head_weight", "must be >= 0 (0: no classification head)")
        if self.head_weight > 0 and self.task != "segmentation":
            raise bad("head_weight", "adds a classification head to a segmentation model; the classifier has none")
        if not 0 <= self.head_dropout < 1:
            raise bad("head_dropout", "must be in [0, 1)")
        if not 0 < self.val_fraction < 1:
            raise bad("val_fraction", "must be in (0, 1)")
        for key in ("hflip", "vflip", "brightness_contrast", "noise"):
            if not 0 <= getattr(self, key) <= 1:
                raise bad(key, "is a probability and must be in [0, 1]")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready values (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["image_size"] = list(self.image_size)
        return out


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(key: str, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's type, or raise a CloudpipeError."""
    default = getattr(TrainConfig(), key)
    if key == "workers" and value == "auto":
        return value
    if key == "workers":
        default = 0  # a number otherwise
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if isinstance(default, tuple):
            return tuple(int(v) for v in value)
        if isinstance(default, list):
            if isinstance(value, str):
                raise TypeError
            return [str(v) for v in (value or [])]
        return str(value)
    except (TypeError, ValueError):
        kind = type(default).__name__
        raise CloudpipeError(f"config: {key} = {value!r} is not a valid {kind}") from None


def load_config(
    task: Task, path: Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Resolve a config: the task's packaged defaults, then ``path``, then ``overrides``.

    Training from random weights (``weights: none``) uses ``scratch_lr`` unless ``lr`` itself is
    given in ``path`` or ``overrides``: the seed's fine-tuning rate makes a randomly initialised
    ResNet diverge (validation loss of 1e6 and more).

    Args:
        task: which stage's defaults to start from.
        path: optional YAML file with any subset of the keys.
        overrides: values from the command line; ``None`` values are ignored.

    Raises:
        CloudpipeError: unreadable YAML, unknown keys (the valid ones are listed), bad values.
    """
    values: dict[str, Any] = read_packaged(DEFAULT_CONFIGS[task])
    loaded: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise CloudpipeError(f"cannot read config ({str(err).splitlines()[0]})", path=path) from None
        if not isinstance(loaded, dict):
            raise CloudpipeError("config must be a YAML mapping of key: value", path=path)
        values.update(loaded)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(given)
    if values.get("weights") == "none" and "lr" not in given and "lr" not in loaded:
        values["lr"] = values.get("scratch_lr", values["lr"])  # random weights diverge at the fine-tuning lr
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise CloudpipeError(f"config: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_FIELDS)}")
    config = TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    if config.task != task:
        raise CloudpipeError(f"config: task = {config.task!r}, but this command trains a {task}")
    return config.validate()


def save_config(config: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), path)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a saved config (e.g. from a checkpoint) without re-reading defaults."""
    return TrainConfig(**{k: _coerce(k, v) for k, v in values.items() if k in _FIELDS}).validate()


def load_run_config(run_dir: Path, task: Task) -> TrainConfig:
    """The resolved config a run saved in ``RUN/config.yaml``, checked to be a ``task`` run.

    Raises:
        CloudpipeError: no such file, unreadable YAML, invalid values, or the other stage.
    """
    values = read_config_values(run_dir)
    path = Path(run_dir) / CONFIG_YAML
    try:
        config = config_from_dict(values)
    except CloudpipeError as err:
        raise CloudpipeError(str(err), path=path) from None
    if config.task != task:
        raise CloudpipeError(f"a {config.task} run; this command needs a {task} run", path=path)
    return config
