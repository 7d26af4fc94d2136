"""Training settings: YAML defaults -> command-line overrides -> validated, typed, saved.

One :class:`TrainConfig` serves both stages (``task: classifier`` or ``task: segmentation``);
the defaults live in ``configs/classifier.yaml`` and ``configs/seg.yaml``. It is a pydantic
model, read as the JSON formats are (:mod:`cloudpipe.core.models`): a bad value is one line
naming the key, what it must be and the value found (``config: epochs: must be a whole number
>= 1, got 0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, Strict, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from cloudpipe.configs import DEFAULT_CONFIGS, read_packaged
from cloudpipe.core.choices import MAX_WORKERS
from cloudpipe.core.constants import MAX_PIXELS
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.models import cut, read_model, shown
from cloudpipe.data.outputs import write_text
from cloudpipe.data.runfolder import CONFIG_YAML, YAML_LIMIT, read_config_values, read_yaml_mapping, yaml_value

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
    """The values a number may take: the field's pydantic bounds, its command-line range, and
    how a refusal says so (``must be a whole number >= 1``)."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    what: str = ""
    """What the value is (``a seed``); by default a whole number or a (finite) number."""
    note: str = ""
    """Said after the range (``(0: off)``)."""

    def bounds(self, whole: bool) -> dict[str, Any]:
        """``Field`` keywords: the bounds, and no NaN or infinity for a float."""
        out: dict[str, Any] = {"gt" if self.low_open else "ge": self.low}
        if self.high is not None:
            out["lt" if self.high_open else "le"] = self.high
        return out if whole else out | {"allow_inf_nan": False}

    def message(self, whole: bool) -> str:
        what = self.what or ("a whole number" if whole else "a finite number" if self.high is None else "a number")
        if self.high is None:
            span = f"{'>' if self.low_open else '>='} {_shown(self.low)}"
        else:
            span = (f"in {'(' if self.low_open else '['}{_shown(self.low)}, {_shown(self.high)}"
                    f"{')' if self.high_open else ']'}")
        return f"must be {what} {span}" + (f" {self.note}" if self.note else "")


def _shown(bound: float) -> str:
    """A range's bound as written: whole numbers in full (``4294967295``), others short."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


@dataclass(frozen=True)
class Option:
    """How a :class:`TrainConfig` key is offered on the training commands (kept on its field)."""

    help: str | dict[str, str] = ""
    """``--help`` text (per stage when a dict; ``{encoder}``, ``{scratch_lr}`` and ``{losses}`` are filled in)."""
    cli: tuple[str, ...] | bool = False
    """Whether it is an option (``True``: ``--name-with-dashes``; or the option's names)."""
    stage: Task | None = None
    """An option of that stage's command only."""
    check: Range | tuple[str, ...] | None = None
    """The values it may take: a :class:`Range`, or the names allowed (its ``Literal``'s)."""


def setting(default: Any = ..., *, factory: Any = None, help: str | dict[str, str] = "", cli: tuple[str, ...] | bool = False,
            check: Range | None = None, stage: Task | None = None, rule: str | None = None, **limits: Any) -> Any:
    """A :class:`TrainConfig` field, declared once: its default, its :class:`Option` (``--help``
    text, whether it is a command-line option, of which stage), and what it may be: a
    :class:`Range` (its bounds, checked by the model) or ``rule``, the words a refusal uses (a
    flag's go without saying), with ``limits`` (``max_length``...) checked too."""
    whole = type(default) is int
    if check is not None:
        rule = check.message(whole)
    elif type(default) is bool:
        rule = "must be true or false"
    kwargs = {"default_factory": factory} if factory else {"default": default}
    info = Field(**kwargs, description=rule, **(check.bounds(whole) if check else {}), **limits)
    info.metadata.append(Option(help, cli, stage, check))
    return info


def _no_bool(value: Any) -> Any:
    """Refuse ``true`` where a number is wanted (Python would count it as 1)."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_type", "a bool is not a number")
    return value


Whole = Annotated[int, BeforeValidator(_no_bool)]
"""A whole number: an int, or a float or text that is one (``2.0``, ``"2"``); no bool."""
Number = Annotated[float, BeforeValidator(_no_bool)]
"""A number: an int, a float or text that is one (YAML reads ``1e-3`` as text); no bool."""
Flag = Annotated[bool, Strict()]
"""``true`` or ``false`` only (not ``'yes'`` or 1)."""


def _workers(value: Any) -> int | str:
    if value == "auto" or (type(value) is int and 0 <= value <= MAX_WORKERS):
        return value
    raise PydanticCustomError("workers", "not auto or a number of workers")


def _loss_terms(value: Any) -> Any:
    """A ``bce=0.75,dice=0.25`` string as ``{name: weight}`` (a mapping is left to the model)."""
    if not isinstance(value, str):
        return value
    pairs = [part.split("=") for part in value.split(",") if part.strip()]
    if any(len(p) != 2 for p in pairs):
        raise PydanticCustomError("loss_terms", "not name=weight pairs")
    return {name.strip(): weight for name, weight in pairs}


def _augment(value: Any) -> str | list:
    """A preset name, or a list of steps (from YAML, or a YAML list given on the command line)."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = yaml_value(value)
        except (yaml.YAMLError, RecursionError) as err:
            raise ValueError(f"not a YAML list ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if isinstance(value, list):
        return [dict(step) if isinstance(step, dict) else step for step in value]
    if not isinstance(value, str):
        raise PydanticCustomError("augment", "not a preset or a list")
    return value


STAGE_ONLY: dict[str, tuple[Task, Any, str]] = {
    "mask_loss_on": ("segmentation", "all", "restricts a mask loss; the classifier has none"),
    "cutmix": ("segmentation", 0.0, "mixes masks; the classifier's labels have none"),
    "best_by": ("classifier", "score", "is the classifier's choice; segmentation picks best.pt by Dice"),
    "head_weight": ("segmentation", 0.0, "adds a classification head to a segmentation model; the classifier has none")}
"""The settings of one stage alone: the stage, the value the other keeps, and why."""
NAME, PATH = 200, 4096
"""The longest model or encoder name, and the longest path (Linux's ``PATH_MAX``), a config may give."""
AT_LEAST_1, AT_LEAST_0 = Range(1), Range(0)
SEED = Range(0, 2**32 - 1, what="a seed")
"""What numpy's and scikit-learn's random states take."""
PROBABILITY = Range(0, 1, what="a probability")


class TrainConfig(BaseModel):
    """Everything a training run needs besides the data folder; each stage's defaults are in
    ``configs/classifier.yaml`` and ``configs/seg.yaml`` (a key they omit takes the default here).
    Keys it does not name are refused; values are checked as they are read (:func:`load_config`)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    task: Task = setting("classifier")
    arch: str = setting("resnet34", cli=True, rule=f"must be a model name of at most {NAME} characters", max_length=NAME, help={
        "classifier": "any torchvision classification model (resnet34, efficientnet_b0, ...) or timm:<name> "
                      "(tiny: a stand-in for tests).",
        "segmentation": "smp architecture: Unet, FPN, ... (tiny: a stand-in for tests)."})
    encoder: str = setting("resnet34", cli=True, stage="segmentation", rule=f"must be an encoder name of at most {NAME} characters",
                           max_length=NAME,
                           help="smp encoder: resnet34, efficientnet-b0, ... or tu-<any timm model>.")
    weights: str = setting("imagenet", cli=("--weights", "--encoder-weights"), max_length=PATH,
                           rule=f"must be imagenet, none or a path of at most {PATH} characters",
                           help="imagenet | none | PATH to a local state dict.")
    freeze: list[str] = setting(factory=lambda: ["layer1", "layer2"], rule="must be a list of submodule names")
    image_size: tuple[Whole, Whole] = setting((512, 768), cli=True, rule="must be two multiples of 32 (H W), each >= 32")
    epochs: Whole = setting(30, cli=True, check=AT_LEAST_1)
    batch_size: Whole = setting(8, cli=True, check=AT_LEAST_1)
    accumulate: Whole = setting(4, cli=True, check=AT_LEAST_1, help="Gradient accumulation steps.")
    lr: Number = setting(5e-3, cli=True, check=Range(0, 10, True, True),
                         help="Learning rate (with --weights none: scratch_lr {scratch_lr} unless given).")
    scratch_lr: Number = setting(5e-4, check=Range(0, 10, True, True))
    weight_decay: Number = setting(0.0, cli=True, check=AT_LEAST_0)
    optimizer: Literal[OPTIMIZERS] = setting("adam", cli=True, help="sgd: momentum 0.9, Nesterov.")
    encoder_lr_ratio: Number = setting(1.0, cli=True, check=Range(0, 10, low_open=True, note="(1: the same lr as the rest)"),
                                       help="The lr of {encoder} as a share of --lr.")
    """The encoder's lr as a share of ``lr`` (segmentation: smp's ``encoder``; classifier: all but ``fc``)."""
    schedule: Literal[SCHEDULES] = setting("plateau", cli=True,
                                           help="plateau: ReduceLROnPlateau per epoch; cosine, onecycle: per optimizer step.")
    warmup_epochs: Whole = setting(0, cli=True, check=AT_LEAST_0,
                                   help="cosine: linear warmup epochs; onecycle: its rising phase (0: 30%).")
    patience: Whole = setting(3, check=AT_LEAST_0)
    grad_clip: Number = setting(0.0, cli=True, check=AT_LEAST_0, help="Clip the gradient norm (0: off).")
    loss: Annotated[dict[str, Number] | None, BeforeValidator(_loss_terms)] = setting(
        None, cli=True, help="Loss terms and weights, of {losses}.",
        rule="must be a mapping of loss terms to weights (e.g. bce=0.75,dice=0.25)")
    """Loss terms and their weights, e.g. ``{bce: 0.75, dice: 0.25}``; None: the stage's :data:`DEFAULT_LOSS`."""
    mask_loss_on: Literal[MASK_LOSS_ON] = setting("all", cli=True, stage="segmentation",
                                                  help="present: the dice/lovasz terms on the non-empty masks only; "
                                                       "positive: every term (BCE too) on them only.")
    ema: Number = setting(0.0, cli=True, check=Range(0, 1, high_open=True, what="a decay", note="(0: no moving average)"),
                          help="EMA decay of the weights (0: off); the average is validated and saved.")
    swa_epochs: Whole = setting(0, cli=True, check=AT_LEAST_0, help="Average the last N epochs' weights (0: off).")
    val_fraction: Number = setting(0.1, cli=True, check=Range(0, 1, True, True), help=(
        "Share of the images held out for validation (without --folds); give both stages the same value "
        "(and split_seed) so their validation images agree."))
    split_seed: Whole = setting(69, check=SEED)
    seed: Whole = setting(69, cli=True, check=SEED)
    folds: Whole = setting(0, cli=True, check=AT_LEAST_0, help="K >= 2 trains K fold models.")
    workers: Annotated[int | Literal["auto"], PlainValidator(_workers)] = setting(
        "auto", cli=True, rule=f"must be auto or a whole number in [0, {MAX_WORKERS}]",
        help="DataLoader workers (auto: none on the CPU, all cores but one, up to 16, with a GPU).")
    device: Literal["auto", "cpu", "cuda"] = setting("auto", cli=True)
    amp: Flag = setting(True)
    channels_last: Flag = setting(True)
    compile: Flag = setting(False, cli=True, help="torch.compile the model.")
    hflip: Number = setting(0.5, check=PROBABILITY)
    vflip: Number = setting(0.5, check=PROBABILITY)
    brightness_contrast: Number = setting(0.5, check=PROBABILITY)
    noise: Number = setting(0.5, check=PROBABILITY)
    augment: Annotated[str | list[dict], PlainValidator(_augment)] = setting("basic", cli=True, help=(
        "basic (the seed's flips, brightness/contrast, noise) | light | medium | heavy (basic + shift-scale-rotate, "
        "grid distortion, crops...), or a YAML list of {{name: <albumentations transform>, <params>}}."),
        rule="must be a preset name or a list of {name: <albumentations transform>, <params>}")
    cutmix: Number = setting(0.0, cli=True, stage="segmentation", check=PROBABILITY,
                             help="CutMix: probability per batch of pasting a box of another image (and its masks).")
    best_by: Literal[BEST_BY] = setting("score", cli=True, stage="classifier",
                                        help="What picks best.pt: score (accuracy at 0.5) | auc (mean per-class ROC AUC).")
    head_weight: Number = setting(0.0, check=Range(0, note="(0: no classification head)"))
    """Weight of a segmentation model's classification head's BCE in the loss."""
    head_dropout: Number = setting(0.2, check=Range(0, 1, high_open=True))
    tensorboard: Flag = setting(True, cli=True, help="TensorBoard event files in each model folder's tensorboard/.")
    keep_last: Flag = setting(True, cli=True, help="Keep last.pt once a model has trained all its epochs (--no-keep-last: "
                                                   "best.pt only, a third of the size; the run can no longer train further).")

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, size: tuple[int, int]) -> tuple[int, int]:
        if min(size) < 32 or any(s % 32 for s in size):
            raise ValueError("must be two multiples of 32 (H W), each >= 32")
        if size[0] * size[1] > MAX_PIXELS:
            raise ValueError(f"must be at most {MAX_PIXELS:,} pixels (16 competition images)")
        return size

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup(cls, value: int, info: ValidationInfo) -> int:
        schedule, epochs = info.data.get("schedule"), info.data.get("epochs")
        if value and schedule == "plateau":
            raise ValueError("needs schedule cosine or onecycle")
        if schedule is not None and schedule != "plateau" and epochs is not None and value >= epochs:
            raise ValueError(f"must be below epochs ({epochs})")
        return value

    @field_validator("loss")
    @classmethod
    def _loss(cls, value: dict[str, float] | None, info: ValidationInfo) -> dict[str, float] | None:
        task = info.data.get("task")
        if task is None:
            return value
        if value is None:
            return dict(DEFAULT_LOSS[task])
        known = LOSSES[task]
        if not value or any(name not in known for name in value):
            raise ValueError(f"must weight some of {', '.join(known)} (the {task}'s losses)")
        if not all(0 <= w < float("inf") for w in value.values()) or not any(value.values()):
            raise ValueError("weights must be finite and >= 0, at least one > 0")
        return value

    @field_validator("swa_epochs")
    @classmethod
    def _swa(cls, value: int, info: ValidationInfo) -> int:
        if value and info.data.get("ema"):
            raise ValueError("and ema both average the weights; choose one")
        if "epochs" in info.data and value > info.data["epochs"]:
            raise ValueError(f"must be at most epochs ({info.data['epochs']})")
        return value

    @field_validator("folds")
    @classmethod
    def _folds(cls, value: int) -> int:
        if value == 1:
            raise ValueError("must be 0 (one hold-out split) or >= 2")
        return value

    @field_validator(*STAGE_ONLY)
    @classmethod
    def _stage_only(cls, value: Any, info: ValidationInfo) -> Any:
        """The settings of one stage alone stay at their default in the other's config."""
        stage, default, why = STAGE_ONLY[info.field_name]
        if info.data.get("task") not in (None, stage) and value != default:
            raise ValueError(why)
        return value

    @model_validator(mode="after")
    def _augmentations(self) -> TrainConfig:
        """The augmentations built and run once (:func:`~cloudpipe.data.transforms.check_augment`),
        after every value has passed (its one line is its own)."""
        from cloudpipe.data.transforms import check_augment

        check_augment(self.augment, self.image_size, masks=self.task == "segmentation")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready values (tuples as lists)."""
        return self.model_dump() | {"image_size": list(self.image_size)}


def options(task: Task) -> dict[str, Option]:
    """The keys offered as options of ``task``'s training command, in field order; a key of
    named values has them as its ``check``."""
    out = {}
    for name, field in TrainConfig.model_fields.items():
        option = next(m for m in field.metadata if isinstance(m, Option))
        if option.cli and option.stage in (None, task):
            names = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
            out[name] = Option(option.help, option.cli, option.stage, names or option.check)
    return out


def _number(value: Any) -> float:
    """A value compared before it is checked: a number, else infinity (the check then reports it)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("inf")


def parse_settings(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``--set key=value`` items as config values: each value read as a YAML value (``0.2``,
    ``true``, ``[64, 96]``, ``{bce: 0.75}``) as a ``--config`` file is read (no aliases, at most
    its size), so it is checked exactly as the same line in a YAML file would be (by :func:`load_config`).

    Raises:
        CloudpipeError: an item without ``=``, an unknown key (the valid ones are listed), a value
            that is not YAML, holds an alias or is larger than a config file.
    """
    keys = TrainConfig.model_fields
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, where = key.strip(), f"--set {shown(item)}"
        if not sep or not key:
            raise CloudpipeError(f"{where}: expected key=value, e.g. --set val_fraction=0.2")
        if key not in keys:
            raise CloudpipeError(f"{where}: unknown key {shown(key)}; valid keys: {', '.join(keys)}")
        if len(text.encode("utf-8", "surrogateescape")) > YAML_LIMIT:
            raise CloudpipeError(f"{where}: larger than {YAML_LIMIT // 1024} KiB, as no config file may be")
        try:
            values[key] = yaml_value(text) if text.strip() else None
        except (yaml.YAMLError, RecursionError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CloudpipeError(f"{where}: not a YAML value ({reason})") from None
        if values[key] is None:
            raise CloudpipeError(f"{where}: no value")
    return values


def load_config(
    task: Task, path: Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Resolve a config: ``task``'s packaged defaults, then the YAML file ``path`` (any subset of
    the keys), then ``overrides`` (the command line's; ``None`` values ignored).

    Training from random weights (``weights: none``) uses ``scratch_lr`` unless ``lr`` itself is
    given in ``path`` or ``overrides``: the seed's fine-tuning rate makes a randomly initialised
    ResNet diverge (validation loss of 1e6 and more). Likewise a packaged ``warmup_epochs`` (the
    segmentation default's cosine warmup) is dropped when the run has no room for it (``epochs``
    not above it) or a plateau schedule, unless ``warmup_epochs`` itself is given.

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
    unknown = sorted(map(str, set(values) - set(TrainConfig.model_fields)))
    if unknown:
        raise CloudpipeError(f"config: unknown key(s) {cut(', '.join(unknown))}; valid keys: "
                             f"{', '.join(TrainConfig.model_fields)}")
    config = read_model(TrainConfig, values, "config")
    if config.task != task:
        raise CloudpipeError(f"config: task: must be {task}, the stage this command trains, got {config.task!r}")
    return config


def save_config(config: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), path)


def config_from_dict(values: dict[str, Any], path: Path | None = None, what: str = "config") -> TrainConfig:
    """Rebuild a saved config (e.g. from a checkpoint) without re-reading defaults; keys this
    cloudpipe does not name are dropped. A bad value is one line naming ``path`` (the file it
    came from) and ``what``."""
    known = {k: v for k, v in values.items() if k in TrainConfig.model_fields}
    return read_model(TrainConfig, known, what, path=path)


def checkpoint_config(state: dict, path: Path) -> TrainConfig:
    """The config a checkpoint (read from ``path``) was trained with, checked as a config file is."""
    return config_from_dict(state["config"], path, "checkpoint's config: config")


def load_run_config(run_dir: Path, task: Task) -> TrainConfig:
    """The resolved config a run saved in ``RUN/config.yaml``, checked to be a ``task`` run (else
    a CloudpipeError: no such file, unreadable YAML, invalid values, or the other stage)."""
    path = Path(run_dir) / CONFIG_YAML
    config = config_from_dict(read_config_values(run_dir), path)
    if config.task != task:
        raise CloudpipeError(f"a {config.task} run; this command needs a {task} run", path=path)
    return config
