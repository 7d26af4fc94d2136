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
from cloudpipe.core.choices import DEVICES
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.outputs import write_text
from cloudpipe.data.runfolder import CONFIG_YAML, read_config_values

Task = Literal["classifier", "segmentation"]
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("plateau", "cosine", "onecycle")
"""``plateau`` steps once per epoch on the validation loss; ``cosine`` and ``onecycle`` once per optimizer step."""
LOSSES: dict[Task, tuple[str, ...]] = {"classifier": ("bce", "focal"), "segmentation": ("bce", "dice", "lovasz", "focal")}
"""The loss terms each stage may weight (segmentation-models-pytorch's losses)."""
DEFAULT_LOSS: dict[Task, dict[str, float]] = {"classifier": {"bce": 1.0}, "segmentation": {"bce": 1.0, "dice": 1.0}}
"""What each stage trained with before ``loss`` was a setting: a saved config without it means this."""
REGION_LOSSES = ("dice", "lovasz")
"""Terms that ``mask_loss_on: present`` restricts to the (image, class) pairs whose mask is not empty."""


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
    optimizer: str = "adam"
    """adam | adamw | sgd (momentum 0.9, Nesterov)."""
    encoder_lr_ratio: float = 1.0
    """The encoder's lr as a share of ``lr`` (segmentation: smp's ``encoder``; classifier: all but ``fc``)."""
    schedule: str = "plateau"
    """plateau (ReduceLROnPlateau on the validation loss) | cosine | onecycle (per optimizer step)."""
    warmup_epochs: int = 0
    """cosine: linear warmup from lr/100 over this many epochs; onecycle: its rising phase (0: torch's 30%)."""
    patience: int = 3
    grad_clip: float = 0.0
    """Clip the gradients' total norm to this (0: no clipping)."""
    loss: dict[str, float] | None = None
    """Loss terms and their weights, e.g. ``{bce: 0.75, dice: 0.25}``; None: the stage's :data:`DEFAULT_LOSS`."""
    mask_loss_on: str = "all"
    """Segmentation: ``present`` computes the Dice / Lovasz terms on the non-empty (image, class) masks only."""
    ema: float = 0.0
    """Decay of an exponential moving average of the weights, updated every optimizer step (0: none)."""
    swa_epochs: int = 0
    """Average the weights at the end of each of the last N epochs (stochastic weight averaging; 0: none)."""
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

    def __post_init__(self) -> None:
        if self.loss is None:
            self.loss = dict(DEFAULT_LOSS.get(self.task, {"bce": 1.0}))

    def validate(self) -> TrainConfig:
        """Check every value; raise a CloudpipeError quoting the first bad one."""

        def bad(key: str, why: str) -> CloudpipeError:
            return CloudpipeError(f"config: {key} = {getattr(self, key)!r} {why}")

        if self.task not in DEFAULT_CONFIGS:
            raise bad("task", f"is not one of {', '.join(DEFAULT_CONFIGS)}")
        if self.device not in DEVICES:
            raise bad("device", f"is not one of {', '.join(DEVICES)}")
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
        for key, names in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("mask_loss_on", ("all", "present"))):
            if getattr(self, key) not in names:
                raise bad(key, f"is not one of {', '.join(names)}")
        if not 0 < self.encoder_lr_ratio <= 10:
            raise bad("encoder_lr_ratio", "must be in (0, 10] (1: the same lr as the rest)")
        for key in ("warmup_epochs", "swa_epochs", "grad_clip"):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        if self.warmup_epochs and self.schedule == "plateau":
            raise bad("warmup_epochs", "needs schedule cosine or onecycle")
        if self.warmup_epochs >= self.epochs and self.schedule != "plateau":
            raise bad("warmup_epochs", f"must be below epochs ({self.epochs})")
        if not 0 <= self.ema < 1:
            raise bad("ema", "is a decay and must be in [0, 1) (0: no moving average)")
        if self.ema and self.swa_epochs:
            raise bad("swa_epochs", "and ema both average the weights; choose one")
        if self.swa_epochs > self.epochs:
            raise bad("swa_epochs", f"must be at most epochs ({self.epochs})")
        known = LOSSES.get(self.task, ())
        if not self.loss or any(name not in known for name in self.loss):
            raise bad("loss", f"must weight some of {', '.join(known)} (the {self.task}'s losses)")
        if any(w < 0 for w in self.loss.values()) or not any(self.loss.values()):
            raise bad("loss", "weights must be >= 0, at least one > 0")
        if self.mask_loss_on == "present" and self.task != "segmentation":
            raise bad("mask_loss_on", "restricts a mask loss; the classifier has none")
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
        if key == "loss":
            return _loss_terms(value)
        if isinstance(default, list):
            if isinstance(value, str):
                raise TypeError
            return [str(v) for v in (value or [])]
        return str(value)
    except (TypeError, ValueError):
        kind = "mapping of loss terms to weights (e.g. bce=0.75,dice=0.25)" if key == "loss" else type(default).__name__
        raise CloudpipeError(f"config: {key} = {value!r} is not a valid {kind}") from None


def _loss_terms(value: Any) -> dict[str, float]:
    """``{name: weight}`` from a YAML mapping or a ``bce=0.75,dice=0.25`` string."""
    if isinstance(value, str):
        pairs = [part.split("=") for part in value.split(",") if part.strip()]
        if any(len(p) != 2 for p in pairs):
            raise TypeError
        value = {name.strip(): weight for name, weight in pairs}
    if not isinstance(value, dict) or any(isinstance(w, bool) for w in value.values()):
        raise TypeError
    return {str(name): float(weight) for name, weight in value.items()}


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
