"""Training settings: YAML defaults -> command-line overrides -> validated, typed, saved.

One :class:`TrainConfig` serves both stages (``task: classifier`` or ``task: segmentation``);
the defaults live in ``configs/classifier.yaml`` and ``configs/seg.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cloudpipe.configs import DEFAULT_CONFIGS, read_packaged
from cloudpipe.core.choices import DEVICES, MAX_WORKERS
from cloudpipe.core.competition import MAX_PIXELS
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.outputs import write_text
from cloudpipe.data.runfolder import CONFIG_YAML, read_config_values, read_yaml_mapping

Task = Literal["classifier", "segmentation"]
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("plateau", "cosine", "onecycle")
"""``plateau`` steps once per epoch on the validation loss; ``cosine`` and ``onecycle`` once per optimizer step."""
LOSSES: dict[Task, tuple[str, ...]] = {"classifier": ("bce", "focal"), "segmentation": ("bce", "dice", "lovasz", "focal")}
"""The loss terms each stage may weight (segmentation-models-pytorch's losses)."""
DEFAULT_LOSS: dict[Task, dict[str, float]] = {"classifier": {"bce": 1.0}, "segmentation": {"bce": 1.0, "dice": 1.0}}
"""The loss terms each stage trains with when ``loss`` is not set."""
REGION_LOSSES = ("dice", "lovasz")
"""Terms that ``mask_loss_on: present`` restricts to the (image, class) pairs whose mask is not empty."""
MASK_LOSS_ON = ("all", "present", "positive")
"""``all``: every term on every pair; ``present``: the :data:`REGION_LOSSES` on the non-empty pairs
only; ``positive``: every term (BCE too) on the non-empty pairs only (1st place's ``ignore_negative``)."""
BEST_BY = ("score", "auc")
"""What picks ``best.pt``: the stage's score (classifier accuracy at 0.5, segmentation Dice) or,
for the classifier, the mean per-class ROC AUC of the validation probabilities."""


@dataclass(frozen=True)
class Range:
    """The values a number may take, and how a refusal says so (``epochs = 0 must be >= 1``)."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    what: str = ""
    """What the value is, said before the range (``is a probability and ``)."""
    note: str = ""
    """Said after the range (``(0: off)``)."""

    def holds(self, value: float) -> bool:
        """Whether ``value`` is a finite number in the range (NaN and infinities never are)."""
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def message(self) -> str:
        if self.high is None:
            span = f"{'>' if self.low_open else '>='} {_shown(self.low)} (and finite)"
        else:
            span = (f"in {'(' if self.low_open else '['}{_shown(self.low)}, {_shown(self.high)}"
                    f"{')' if self.high_open else ']'}")
        return f"{self.what}must be {span}" + (f" {self.note}" if self.note else "")


def _shown(bound: float) -> str:
    """A range's bound as written: whole numbers in full (``4294967295``), others short."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, help: str | dict[str, str] = "",
            cli: tuple[str, ...] | bool = False, check: Range | tuple[str, ...] | None = None,
            stage: Task | None = None) -> Any:
    """A :class:`TrainConfig` field, declared once: its default, its ``--help`` text (per stage
    when a dict; ``{encoder}`` and ``{scratch_lr}`` are filled in), whether it is a command-line
    option of the training commands (``True``: ``--name-with-dashes``; or the option's names), and
    the values it may take (a :class:`Range` or the names allowed), checked by
    :meth:`TrainConfig.validate`; ``stage``: an option of that stage's command only."""
    meta = {"help": help, "cli": cli, "check": check, "stage": stage}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


AT_LEAST_1, AT_LEAST_0 = Range(1), Range(0)
SEED = Range(0, 2**32 - 1, what="is a seed and ")
"""What numpy's and scikit-learn's random states take."""
PROBABILITY = Range(0, 1, what="is a probability and ")


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data folder; each stage's defaults are in
    ``configs/classifier.yaml`` and ``configs/seg.yaml`` (a key they omit takes the default here)."""

    task: Task = setting("classifier", check=tuple(DEFAULT_CONFIGS))
    arch: str = setting("resnet34", cli=True, help={
        "classifier": "any torchvision classification model (resnet34, efficientnet_b0, ...) or timm:<name> "
                      "(tiny: a stand-in for tests).",
        "segmentation": "smp architecture: Unet, FPN, ... (tiny: a stand-in for tests)."})
    encoder: str = setting("resnet34", cli=True, stage="segmentation", help="smp encoder: resnet34, efficientnet-b0, ... or tu-<any timm model>.")
    weights: str = setting("imagenet", cli=("--weights", "--encoder-weights"), help="imagenet | none | PATH to a local state dict.")
    freeze: list[str] = setting(factory=lambda: ["layer1", "layer2"])
    image_size: tuple[int, int] = setting((512, 768), cli=True)
    epochs: int = setting(30, cli=True, check=AT_LEAST_1)
    batch_size: int = setting(8, cli=True, check=AT_LEAST_1)
    accumulate: int = setting(4, cli=True, check=AT_LEAST_1, help="Gradient accumulation steps.")
    lr: float = setting(5e-3, cli=True, check=Range(0, 10, True, True),
                        help="Learning rate (with --weights none: scratch_lr {scratch_lr} unless given).")
    scratch_lr: float = setting(5e-4, check=Range(0, 10, True, True))
    weight_decay: float = setting(0.0, cli=True, check=AT_LEAST_0)
    optimizer: str = setting("adam", cli=True, check=OPTIMIZERS, help="sgd: momentum 0.9, Nesterov.")
    encoder_lr_ratio: float = setting(1.0, cli=True, check=Range(0, 10, low_open=True, note="(1: the same lr as the rest)"),
                                      help="The lr of {encoder} as a share of --lr.")
    """The encoder's lr as a share of ``lr`` (segmentation: smp's ``encoder``; classifier: all but ``fc``)."""
    schedule: str = setting("plateau", cli=True, check=SCHEDULES,
                            help="plateau: ReduceLROnPlateau per epoch; cosine, onecycle: per optimizer step.")
    warmup_epochs: int = setting(0, cli=True, check=AT_LEAST_0,
                                 help="cosine: linear warmup epochs; onecycle: its rising phase (0: 30%).")
    """cosine: linear warmup from lr/100 over this many epochs; onecycle: its rising phase (0: torch's 30%)."""
    patience: int = setting(3, check=AT_LEAST_0)
    grad_clip: float = setting(0.0, cli=True, check=AT_LEAST_0, help="Clip the gradient norm (0: off).")
    loss: dict[str, float] | None = setting(None, cli=True, help="Loss terms and weights, of {losses}.")
    """Loss terms and their weights, e.g. ``{bce: 0.75, dice: 0.25}``; None: the stage's :data:`DEFAULT_LOSS`."""
    mask_loss_on: str = setting("all", cli=True, stage="segmentation", check=MASK_LOSS_ON,
                                help="present: the dice/lovasz terms on the non-empty masks only; "
                                     "positive: every term (BCE too) on them only.")
    ema: float = setting(0.0, cli=True, check=Range(0, 1, high_open=True, what="is a decay and ", note="(0: no moving average)"),
                         help="EMA decay of the weights (0: off); the average is validated and saved.")
    """Decay of an exponential moving average of the weights, updated every optimizer step (0: none)."""
    swa_epochs: int = setting(0, cli=True, check=AT_LEAST_0, help="Average the last N epochs' weights (0: off).")
    val_fraction: float = setting(0.1, cli=True, check=Range(0, 1, True, True), help=(
        "Share of the images held out for validation (without --folds); give both stages the same value "
        "(and split_seed) so their validation images agree."))
    split_seed: int = setting(69, check=SEED)
    seed: int = setting(69, cli=True, check=SEED)
    folds: int = setting(0, cli=True, check=AT_LEAST_0, help="K >= 2 trains K fold models.")
    workers: int | Literal["auto"] = setting("auto", cli=True,
                                             help="DataLoader workers (auto: none on the CPU, all cores but one, up to 16, with a GPU).")
    device: Literal["auto", "cpu", "cuda"] = setting("auto", cli=True, check=DEVICES)
    amp: bool = setting(True)
    channels_last: bool = setting(True)
    compile: bool = setting(False, cli=True, help="torch.compile the model.")
    hflip: float = setting(0.5, check=PROBABILITY)
    vflip: float = setting(0.5, check=PROBABILITY)
    brightness_contrast: float = setting(0.5, check=PROBABILITY)
    noise: float = setting(0.5, check=PROBABILITY)
    augment: str | list[dict] = setting("basic", cli=True, help=(
        "basic (the seed's flips, brightness/contrast, noise) | light | medium | heavy (basic + shift-scale-rotate, "
        "grid distortion, crops...), or a YAML list of {{name: <albumentations transform>, <params>}}."))
    """A preset of :data:`cloudpipe.data.transforms.PRESETS` or a list of albumentations steps."""
    cutmix: float = setting(0.0, cli=True, stage="segmentation", check=PROBABILITY,
                            help="CutMix: probability per batch of pasting a box of another image (and its masks).")
    best_by: str = setting("score", cli=True, stage="classifier", check=BEST_BY,
                           help="What picks best.pt: score (accuracy at 0.5) | auc (mean per-class ROC AUC).")
    head_weight: float = setting(0.0, check=Range(0, note="(0: no classification head)"))
    """Segmentation only: weight of a classification head's BCE in the loss (0: no head)."""
    head_dropout: float = setting(0.2, check=Range(0, 1, high_open=True))
    tensorboard: bool = setting(True, cli=True, help="TensorBoard event files in each model folder's tensorboard/.")
    keep_last: bool = setting(True, cli=True, help="Keep last.pt once a model has trained all its epochs (--no-keep-last: "
                                                   "best.pt only, a third of the size; the run can no longer train further).")

    def __post_init__(self) -> None:
        if self.loss is None:
            self.loss = dict(DEFAULT_LOSS.get(self.task, {"bce": 1.0}))

    def validate(self) -> TrainConfig:
        """Check every value (each field's declared range or names, then what depends on
        several); raise a CloudpipeError quoting the first bad one."""

        def bad(key: str, why: str) -> CloudpipeError:
            return CloudpipeError(f"config: {key} = {getattr(self, key)!r} {why}")

        for f in dataclasses.fields(self):
            check, value = f.metadata.get("check"), getattr(self, f.name)
            if isinstance(check, Range) and not check.holds(value):
                raise bad(f.name, check.message())
            if isinstance(check, tuple) and value not in check:
                raise bad(f.name, f"is not one of {', '.join(check)}")
        if len(self.image_size) != 2 or min(self.image_size) < 32 or any(s % 32 for s in self.image_size):
            raise bad("image_size", "must be two multiples of 32 (H W), each >= 32")
        if self.image_size[0] * self.image_size[1] > MAX_PIXELS:
            raise bad("image_size", f"is more than {MAX_PIXELS:,} pixels (16 competition images)")
        if self.workers != "auto" and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                       or not 0 <= self.workers <= MAX_WORKERS):
            raise bad("workers", f"must be auto or a number in [0, {MAX_WORKERS}]")
        if self.folds == 1:
            raise bad("folds", "must be 0 (one hold-out split) or >= 2")
        if self.head_weight > 0 and self.task != "segmentation":
            raise bad("head_weight", "adds a classification head to a segmentation model; the classifier has none")
        if self.warmup_epochs and self.schedule == "plateau":
            raise bad("warmup_epochs", "needs schedule cosine or onecycle")
        if self.warmup_epochs >= self.epochs and self.schedule != "plateau":
            raise bad("warmup_epochs", f"must be below epochs ({self.epochs})")
        if self.ema and self.swa_epochs:
            raise bad("swa_epochs", "and ema both average the weights; choose one")
        if self.swa_epochs > self.epochs:
            raise bad("swa_epochs", f"must be at most epochs ({self.epochs})")
        known = LOSSES.get(self.task, ())
        if not self.loss or any(name not in known for name in self.loss):
            raise bad("loss", f"must weight some of {', '.join(known)} (the {self.task}'s losses)")
        if not all(math.isfinite(w) and w >= 0 for w in self.loss.values()) or not any(self.loss.values()):
            raise bad("loss", "weights must be finite and >= 0, at least one > 0")
        if self.mask_loss_on != "all" and self.task != "segmentation":
            raise bad("mask_loss_on", "restricts a mask loss; the classifier has none")
        if self.cutmix and self.task != "segmentation":
            raise bad("cutmix", "mixes masks; the classifier's labels have none")
        if self.best_by == "auc" and self.task != "classifier":
            raise bad("best_by", "is the classifier's choice; segmentation picks best.pt by Dice")
        from cloudpipe.data.transforms import check_augment

        check_augment(self.augment, self.image_size)
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
        if key == "augment":
            return _augment(value)
        if isinstance(default, list):
            if isinstance(value, str):
                raise TypeError
            return [str(v) for v in (value or [])]
        return str(value)
    except (TypeError, ValueError, OverflowError):
        kind = {"loss": "mapping of loss terms to weights (e.g. bce=0.75,dice=0.25)",
                "augment": "preset name or list of transforms"}.get(key, type(default).__name__)
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


def _augment(value: Any) -> str | list[dict]:
    """A preset name, or a list of steps (from YAML, or a YAML/JSON list given on the command line)."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise TypeError from None
    if isinstance(value, list):
        return [dict(step) if isinstance(step, dict) else step for step in value]
    if not isinstance(value, str):
        raise TypeError
    return value


def _number(value: Any) -> float:
    """A value compared before it is checked: a number, else infinity (the check then reports it)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("inf")


def parse_settings(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``--set key=value`` items as config values: each value read as a YAML value (``0.2``,
    ``true``, ``[64, 96]``, ``{bce: 0.75}``), so it is checked exactly as the same line in a
    YAML file would be (by :func:`load_config`).

    Raises:
        CloudpipeError: an item without ``=``, an unknown key (the valid ones are listed), a value
            that is not YAML.
    """
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CloudpipeError(f"--set {item!r}: expected key=value, e.g. --set val_fraction=0.2")
        if key not in _FIELDS:
            raise CloudpipeError(f"--set {item!r}: unknown key {key!r}; valid keys: {', '.join(_FIELDS)}")
        try:
            values[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise CloudpipeError(f"--set {item!r}: not a YAML value ({str(err).splitlines()[0]})") from None
        if values[key] is None:
            raise CloudpipeError(f"--set {item!r}: no value")
    return values


def load_config(
    task: Task, path: Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Resolve a config: the task's packaged defaults, then ``path``, then ``overrides``.

    Training from random weights (``weights: none``) uses ``scratch_lr`` unless ``lr`` itself is
    given in ``path`` or ``overrides``: the seed's fine-tuning rate makes a randomly initialised
    ResNet diverge (validation loss of 1e6 and more). Likewise a packaged ``warmup_epochs`` (the
    segmentation default's cosine warmup) is dropped when the run has no room for it (``epochs``
    not above it) or a plateau schedule, unless ``warmup_epochs`` itself is given.

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
        loaded = read_yaml_mapping(path)
        values.update(loaded)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(given)
    if values.get("weights") == "none" and "lr" not in given and "lr" not in loaded:
        values["lr"] = values.get("scratch_lr", values["lr"])  # random weights diverge at the fine-tuning lr
    if "warmup_epochs" not in given and "warmup_epochs" not in loaded and values.get("warmup_epochs") and (
            values.get("schedule") == "plateau" or _number(values.get("epochs")) <= _number(values["warmup_epochs"])):
        values["warmup_epochs"] = 0  # the packaged warmup does not fit this run (e.g. --epochs 1)
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
