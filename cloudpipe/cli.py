"""The ``cloudpipe`` command: a thin click layer over the library.

Each command parses and validates its options, then calls one library function. Heavy imports
(torch, models) happen inside the commands so ``cloudpipe --help`` is instant. A
:class:`~cloudpipe.core.errors.CloudpipeError` becomes one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from pathlib import Path

import click

from cloudpipe.configs import DEFAULT_CONFIGS, read_packaged
from cloudpipe.core.choices import AREA_THRESHOLD, DEFAULT_RULE, DEFAULT_STEPS, DEVICES, MAX_WORKERS, PLACEMENTS, RULES, STEP_NAMES, TOP_K
from cloudpipe.core.constants import MAX_PIXELS
from cloudpipe.core.errors import BadValue, CloudpipeError, SharedError
from cloudpipe.core.profile import PACKAGED, active
from cloudpipe.core.table import format_table
from cloudpipe.data.beside import probs_path_for
from cloudpipe.pipeline.sources import registry, source_inputs

EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
NEW_PATH = click.Path(path_type=Path)


class _Group(click.Group):
    """Every bad input, whether click finds it (usage) or the library does, ends as one
    ``error:`` line on stderr and exit status 2."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as err:
            click.echo(err.ctx.get_help())
            sys.exit(2)
        except click.UsageError as err:
            hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
            echo_error(f"error: {err.format_message()}{hint}")
            sys.exit(2)
        except click.ClickException as err:
            click.echo(f"error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CloudpipeError as err:
            # Raised in a DataLoader worker, the message carries the worker's traceback; its
            # last line is the original "CloudpipeError: <message>".
            message = str(err).strip().splitlines()[-1].removeprefix(f"{CloudpipeError.__module__}.CloudpipeError: ")
            echo_error(f"error: {message}", shared=isinstance(err, SharedError))
            sys.exit(2)


def echo_error(line: str, shared: bool = True) -> None:
    """An error line on stderr; under ``torchrun`` from rank 0 alone when every rank has the
    error (``shared``: a usage error, or one :meth:`~cloudpipe.engine.dist.Dist.together`
    shared), so that one line says it; a rank's own error is printed by that rank."""
    from cloudpipe.engine.dist import Dist

    if Dist.env_rank() == 0 or not shared:
        click.echo(line, err=True)


DEVICE = click.Choice(DEVICES)


class Workers(click.ParamType):
    """``auto`` or a number of DataLoader workers (0 to :data:`~cloudpipe.core.choices.MAX_WORKERS`)."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, int):
            return value
        try:
            number = int(value)
        except ValueError:
            number = -1
        if not 0 <= number <= MAX_WORKERS:
            self.fail(f"{value!r} is not auto or a number in [0, {MAX_WORKERS}]", param, ctx)
        return number


WORKERS = Workers()


def with_options(*options):
    """Apply several click options as one decorator, in the order listed."""

    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _scales(ctx, param, value: str | None) -> tuple[float, ...] | None:
    """``--tta-scales 0.75,1,1.25``: distinct factors in [0.25, 4] (:func:`~cloudpipe.engine.settings.check_tta_scales`)."""
    from cloudpipe.engine.settings import TTA_SCALES, check_tta_scales

    if value is None:
        return None
    try:
        return check_tta_scales(tuple(float(part) for part in value.split(",") if part.strip()))
    except BadValue:
        raise click.BadParameter(f"{value!r}: give distinct factors in [{TTA_SCALES[0]:g}, {TTA_SCALES[1]:g}], "
                                 "e.g. 0.75,1,1.25") from None
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. 0.75,1,1.25") from None


def inference_options(batch_size: int, tta: bool = True):
    """--batch-size, --device, --workers, --decode, --compile, --quiet (and --tta, --tta-views) for commands that run a model;
    the command receives them as one ``settings`` (:class:`InferenceSettings`)."""
    options = [
        click.option("--batch-size", type=click.IntRange(min=1), default=batch_size),
        click.option("--device", type=DEVICE, default=DEVICES[0]),
        click.option("--workers", type=WORKERS, default="auto", show_default=True,
                     help="DataLoader workers (auto: none on the CPU, all cores but one, up to 16, with a GPU)."),
        click.option("--decode", type=click.Choice(["workers", "device"]), default="workers", show_default=True,
                     help="Where JPEGs are decoded: reduced in the workers, or whole batches on the model's device (nvJPEG on a GPU)."),
        click.option("--compile", "compile_", is_flag=True, help="torch.compile the model first (pays on many images)."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
        click.option("--allow-partial", is_flag=True,
                     help="Run a K-fold run missing some folds' models with those it has (warns) instead of refusing it."),
    ]
    if tta:
        options += [click.option("--tta", is_flag=True, help="Average the model over flipped views (see --tta-views)."),
                    click.option("--tta-views", type=click.Choice(["3", "4"]), default=None,
                                 help="3: identity, horizontal, vertical flip; 4: also both (implies --tta) [default: 3]."),
                    click.option("--tta-scales", default=None, callback=_scales, metavar="S,S,...",
                                 help="Also average over the images resized by these factors, e.g. 0.75,1,1.25 "
                                      "(multi-scale TTA; with --tta, every flip at every scale) [default: 1].")]

    def decorate(fn):
        def command(batch_size: int, device: str, workers: int | str, decode: str, compile_: bool, quiet: bool,
                    allow_partial: bool, tta: bool = False, tta_views: str | None = None,
                    tta_scales: tuple[float, ...] | None = None, **kwargs):
            from cloudpipe.engine.settings import InferenceSettings

            settings = InferenceSettings(device=device, batch_size=batch_size, workers=workers, decode=decode,
                                         compile=compile_, tta=tta or tta_views is not None,
                                         tta_views=int(tta_views or 3), tta_scales=tta_scales or (1.0,), progress=not quiet,
                                         allow_partial=allow_partial)
            return fn(settings=settings, **kwargs)

        return with_options(*options)(functools.wraps(fn)(command))

    return decorate


class Shape(click.Tuple):
    """``H W``: a mask or image size, two numbers >= 1 of at most
    :data:`~cloudpipe.core.competition.MAX_PIXELS` pixels in all (every shape option's type)."""

    def __init__(self) -> None:
        super().__init__([click.IntRange(min=1), click.IntRange(min=1)])

    def convert(self, value, param, ctx):
        height, width = super().convert(value, param, ctx)
        if height * width > MAX_PIXELS:
            self.fail(f"{height} x {width} is more than {MAX_PIXELS:,} pixels (16 competition images)", param, ctx)
        return height, width


SHAPE = Shape()


class Finite(click.FloatRange):
    """A float range that refuses NaN and infinities (which pass click's comparisons)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class GateThresholds(click.ParamType):
    """``--thresholds FILE|T``: a ``thresholds.json`` (tune-threshold's), or one threshold in [0, 1]
    for every class (a number is read as a threshold)."""

    name = "FILE|T"

    def convert(self, value, param, ctx):
        if isinstance(value, (float, Path)):
            return value
        try:
            number = float(value)
        except ValueError:
            return EXISTING_FILE.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if not 0 <= number <= 1:
            self.fail(f"{value!r} is not a threshold in [0, 1] (nor a thresholds.json file)", param, ctx)
        return number


GATE_THRESHOLDS = GateThresholds()


def shape_option(names: str | tuple[str, ...], help: str):
    """An ``H W`` option (one name, or its names and parameter) defaulting to the profile's submission size."""
    return click.option(*((names,) if isinstance(names, str) else names), type=SHAPE, default=None, show_default=False, metavar="H W",
                        help=f"{help} [default: the profile's submission size]")


RUN_OPTIONS = ("run_dirs", "run_dir", "seg_run", "classifier_run")
"""The parameter names under which commands take training runs."""


def profiled(command):
    """Add ``--profile`` and run ``command`` under the profile of its data (``--data``, or the
    folder of ``--truth``: its ``profile.yaml``, else ``--profile``, else clouds), or of its runs
    where it has no data (:func:`~cloudpipe.data.profiles.command_profile`: runs of another
    profile are refused in one line)."""

    @click.option("--profile", "profile_spec", metavar="NAME|FILE", default=None,
                  help=f"The data's profile when its folder has no profile.yaml: {', '.join(PACKAGED)} (clouds is the "
                       "default) or a profile YAML file.")
    @functools.wraps(command)
    def run(profile_spec: str | None, **options):
        from cloudpipe.core.profile import use_profile
        from cloudpipe.data.profiles import command_profile

        data = options.get("data_dir") or (options["truth_csv"].parent if options.get("truth_csv") else None)
        runs = [path for name in RUN_OPTIONS for path in _paths(options.get(name))]
        with use_profile(command_profile(data=data, runs=runs, option=profile_spec)):
            return command(**options)

    return run


def _paths(value: Path | tuple[Path, ...] | None) -> tuple[Path, ...]:
    return () if value is None else (value,) if isinstance(value, Path) else tuple(value)


class _AboveBars(logging.Handler):
    """The library's log lines (``cloudpipe.*`` loggers) above any progress bar: on stdout, warnings on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)


def log_to_stdout() -> None:
    """Show the library's ``INFO`` lines as the commands' own output (once per process)."""
    logger = logging.getLogger("cloudpipe")
    if not any(isinstance(h, _AboveBars) for h in logger.handlers):
        logger.addHandler(_AboveBars())
    logger.setLevel(logging.INFO)
    logger.propagate = False  # printed once, here


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="cloudpipe")
def main() -> None:
    """Two-stage submission pipeline for Kaggle's Understanding Clouds from Satellite Images."""
    log_to_stdout()


@main.command()
@profiled
@click.option("--out", "out_dir", type=NEW_PATH, required=True, help="The data folder to write.")
@click.option("--train", "n_train", type=click.IntRange(min=2), default=100, help="Training images.")
@click.option("--test", "n_test", type=click.IntRange(min=1), default=20, help="Test images.")
@click.option("--height", type=click.IntRange(min=16), default=None, help="Image height [default: the profile's].")
@click.option("--width", type=click.IntRange(min=16), default=None, help="Image width [default: the profile's].")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, help="Random seed (same seed, same data).")
@click.option("--overwrite", is_flag=True, help="Replace an --out folder that synth made (never another folder).")
def synth(out_dir: Path, n_train: int, n_test: int, height: int, width: int, seed: int, overwrite: bool) -> None:
    """Write a synthetic dataset in the Kaggle layout of --profile to --out."""
    from cloudpipe.data.synth import make_dataset

    size = active().image_size
    s = make_dataset(out_dir, train=n_train, test=n_test, shape=(height or size[0], width or size[1]), seed=seed,
                     overwrite=overwrite)
    click.echo(f"wrote {s.train} train and {s.test} test images ({s.shape[0]}x{s.shape[1]}) to {s.out_dir}")


@main.command()
@profiled
@click.option("--data", "data_dir", type=EXISTING_DIR, required=True, help="Kaggle-layout data folder to take images from.")
@click.option("--out", "out_dir", type=NEW_PATH, required=True, help="The new data folder to write.")
@click.option("--train", "n_train", type=click.IntRange(min=2), required=True, help="Training images to keep (at random).")
@click.option("--test", "n_test", type=click.IntRange(min=1), required=True, help="Test images to keep (at random).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, help="Random seed (same seed, same images).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier subset in --out.")
def subset(data_dir: Path, out_dir: Path, n_train: int, n_test: int, seed: int, overwrite: bool) -> None:
    """Write a data folder in the Kaggle layout holding part of --data: copies of N random train and
    test images, with their rows of train.csv, sample_submission.csv and test_truth.csv."""
    from cloudpipe.pipeline.subset import subset_data

    click.echo(subset_data(data_dir, out_dir, train=n_train, test=n_test, seed=seed, overwrite=overwrite).line())


@main.command()
@profiled
@click.option("--truth", "truth_csv", type=EXISTING_FILE, required=True, help="Truth CSV (train.csv-style).")
@click.option("--pred", "pred_csv", type=EXISTING_FILE, required=True, help="Submission CSV to score.")
@click.option("--truth-shape", type=SHAPE, default=None, metavar="H W",
              help="Mask size of the truth CSV [default: the training images' size for a data folder's train.csv, "
                   "else the profile's submission size].")
@shape_option(("--mask-shape", "--pred-shape", "pred_shape"), "Mask size of the submission (--pred-shape: the same).")
def evaluate(truth_csv: Path, pred_csv: Path, truth_shape: tuple[int, int] | None, pred_shape: tuple[int, int]) -> None:
    """Kaggle mean Dice of a submission, overall and per class.

    Truth masks are resized to the submission's size (nearest-neighbour) when sizes differ.
    """
    from cloudpipe.pipeline.evaluate import evaluate_files

    result = evaluate_files(truth_csv, pred_csv, truth_shape, pred_shape)
    click.echo(format_table([{"class": k, "dice": v} for k, v in result.table.items()]))
    click.echo(f"scored {result.scored} of {result.truth_images} truth images")


def training_options(task: str):
    """Options shared by train-classifier and train-seg, made from the fields of
    :class:`~cloudpipe.engine.config.TrainConfig` that declare one; None means "from the
    config" (the stage's YAML, whose values ``--help`` shows)."""
    from cloudpipe.engine.config import LOSSES, Option, Range, TrainConfig, options

    defaults = TrainConfig.model_construct().model_dump() | read_packaged(DEFAULT_CONFIGS[task])
    fill = {"encoder": "the encoder" if task == "segmentation" else "the backbone (all but fc)",
            "scratch_lr": defaults["scratch_lr"], "losses": ", ".join(LOSSES[task])}

    def option(name: str, meta: Option):
        value = defaults[name]
        names = meta.cli if isinstance(meta.cli, tuple) else ("--" + name.replace("_", "-"),)
        check, kwargs = meta.check, {}
        if isinstance(value, bool):
            names = (f"{names[0]}/--no-{names[0][2:]}",)
        elif name == "workers":
            kwargs["type"] = WORKERS
        elif isinstance(check, tuple):
            kwargs["type"] = click.Choice(check)
        elif isinstance(check, Range):
            kind = click.IntRange if isinstance(value, int) else Finite
            kwargs["type"] = kind(check.low, check.high, min_open=check.low_open, max_open=check.high_open)
        elif isinstance(value, (list, tuple)):
            kwargs |= {"type": (int, int), "metavar": "H W"}
        elif isinstance(value, dict):
            kwargs["metavar"] = "NAME=W,..."
        elif isinstance(value, int):
            kwargs["type"] = int
        shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        if isinstance(value, dict):
            shown = ",".join(f"{k}={v:g}" for k, v in value.items())
        text = meta.help.get(task, "") if isinstance(meta.help, dict) else meta.help
        text = f"{text.format(**fill)} [default: {shown}, configs/{DEFAULT_CONFIGS[task]}]".strip()
        return click.option(*names, name, default=None, help=text, **kwargs)

    generated = [option(name, meta) for name, meta in options(task).items()]
    return with_options(
        click.option("--data", "data_dir", type=EXISTING_DIR, required=True, help="Kaggle-layout data folder."),
        click.option("--out", "out_dir", type=NEW_PATH, required=True, help="Run folder to write."),
        click.option("--config", "config_path", type=EXISTING_FILE, default=None, help="YAML overriding the defaults."),
        click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
                     help="Any config key (as in the YAML, e.g. val_fraction=0.2, hflip=0), over --config; repeatable. "
                          "An option named for the key wins over it."),
        *generated,
        click.option("--fold", type=click.IntRange(min=0), default=None, help="Train only fold I of --folds K."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    )


def _train(task: str, data_dir: Path, out_dir: Path, config_path: Path | None, settings: tuple[str, ...], fold: int | None,
           resume: bool, quiet: bool, **overrides) -> None:
    from cloudpipe.engine.config import load_config, parse_settings
    from cloudpipe.engine.train import train_run

    given = {k: v for k, v in overrides.items() if v is not None}
    config = load_config(task, config_path, parse_settings(settings) | given)
    results = train_run(config, data_dir, out_dir, resume=resume, fold=fold, progress=not quiet)
    for r in results:
        click.echo(f"{r.out_dir}: best epoch {r.best_epoch}/{r.epochs}, score {r.best_score:.4f}")


@main.command("train-classifier")
@profiled
@training_options("classifier")
def train_classifier(**options) -> None:
    """Train the ResNet presence classifier (defaults: configs/classifier.yaml, the seed recipe)."""
    _train("classifier", **options)


@main.command("train-seg")
@profiled
@training_options("segmentation")
def train_seg(**options) -> None:
    """Train the segmentation model (defaults: configs/seg.yaml)."""
    _train("segmentation", **options)


def _names(ctx, param, value: str | None) -> list[str] | None:
    """A comma-separated list of names (None stays None)."""
    return None if value is None else [name.strip() for name in value.split(",") if name.strip()]


def weights_option(per: str, of: str):
    """--ensemble-weight: one weight per ``per`` given, the weighted mean ``of`` them."""
    return click.option("--ensemble-weight", "weights", type=Finite(min=0, min_open=True), multiple=True,
                        help=f"One per {per}, in order: weighted mean of the {of} [default: equal].")


def ensemble_runs_option(what: str):
    """--run (repeatable: an ensemble) and --ensemble-weight."""
    return with_options(
        click.option("--run", "run_dirs", type=EXISTING_DIR, required=True, multiple=True,
                     help=f"{what} run folder; repeat for an ensemble (probabilities averaged)."),
        weights_option("--run", "runs"),
    )


def source_input_options(split: str):
    """One option per input file of the registered presence sources (:mod:`cloudpipe.pipeline.sources`),
    for the ``split`` images; the command receives them as ``gate_files`` (input name -> file)."""
    inputs = source_inputs()
    options = [click.option(i.option, i.name, type=EXISTING_FILE, default=None,
                            help=f"{i.what[0].upper()}{i.what[1:]} of the {'validation' if split == 'val' else 'test'} images: gate on "
                                 f"{', '.join(n for n, s in registry().items() if s.input == i)}"
                                 f"{'' if split == 'val' else ' (when the thresholds do)'}.") for i in inputs.values()]

    def decorate(fn):
        def command(**kwargs):
            given = {name: kwargs.pop(name, None) for name in inputs}
            return fn(gate_files={name: file for name, file in given.items() if file is not None}, **kwargs)

        return with_options(*options)(functools.wraps(fn)(command))

    return decorate


@main.command()
@profiled
@click.option("--seg", "seg_csv", type=EXISTING_FILE, required=True, help="Segmentation submission to gate.")
@ensemble_runs_option("Classifier")
@click.option("--data", "data_dir", type=EXISTING_DIR, required=True, help="Kaggle-layout data folder.")
@click.option("--out", type=NEW_PATH, default=Path("submissions/submission.csv"), help="Submission to write.")
@click.option("--thresholds", "thresholds", type=GATE_THRESHOLDS, default=None,
              help="thresholds.json from tune-threshold, or one threshold T for every class "
                   "[default for one run: RUN/thresholds.json, else 0.5].")
@shape_option("--mask-shape", "Mask size of the segmentation submission.")
@source_input_options("test")
@click.option("--at-least-one/--no-at-least-one", default=None,
              help="Keep the most probable class of an image whose masks are all blanked [default: as thresholds.json says].")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@inference_options(batch_size=16)
def predict(seg_csv: Path, run_dirs: tuple[Path, ...], weights: tuple[float, ...], data_dir: Path, out: Path,
            thresholds: Path | float | None, mask_shape: tuple[int, int], gate_files: dict[str, Path],
            at_least_one: bool | None, overwrite: bool, settings) -> None:
    """Blank the segmentation masks of classes judged absent (by the classifier, or the sources
    thresholds.json names); write the submission."""
    from cloudpipe.pipeline.gate import GateInputs
    from cloudpipe.pipeline.predict import predict_submission

    summary = predict_submission(seg_csv, run_dirs, data_dir, out, weights=weights,
                                 thresholds=thresholds, mask_shape=mask_shape, settings=settings, overwrite=overwrite,
                                 inputs=GateInputs(gate_files, at_least_one=at_least_one))
    from cloudpipe.engine.dist import Dist

    if Dist.env_rank() == 0:  # under torchrun, rank 0 wrote the files
        click.echo(summary.line())
        click.echo(f"wrote {out} and {probs_path_for(out)}")


CHOICE_OPTION = click.option(
    "--choice", type=click.Choice(RULES), default=DEFAULT_RULE, show_default=True,
    help="How tuned values are chosen: best (the highest validation score) or robust (the untuned default unless "
         "the gain is beyond one standard error of the per-image differences, else the middle of the near-best values).")

@main.command("tune-threshold")
@profiled
@ensemble_runs_option("Classifier (val_probs.csv, else its models)")
@click.option("--data", "data_dir", type=EXISTING_DIR, required=True, help="Kaggle-layout data folder (train.csv).")
@click.option("--seg", "seg_csv", type=EXISTING_FILE, default=None, help="Segmentation predictions on validation images.")
@click.option("--objective", type=click.Choice(["dice", "accuracy"]), default=None, help="[default: dice with --seg, else accuracy]")
@shape_option("--mask-shape", "Mask size of the --seg predictions.")
@click.option("--out", type=NEW_PATH, default=None,
              help="JSON to write [default for one run: RUN/thresholds.json, replaced; an ensemble: required].")
@click.option("--plot", type=NEW_PATH, default=None, help="PNG of score against threshold [default: --out with .png].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out / --plot file.")
@source_input_options("val")
@click.option("--sources", default=None, callback=_names, metavar="A,B,...",
              help=f"Sources to try: {', '.join(registry())} (blends of the classifier with each other "
                   "one are tried too) [default: the classifier and every source whose input is given].")
@click.option("--top-k", type=click.IntRange(min=1), default=TOP_K, help="Pixels averaged by top_mean (at the submission size).")
@click.option("--area-threshold", type=Finite(0, 1), default=AREA_THRESHOLD, help="Pixel probability counted by area.")
@click.option("--placement", type=click.Choice(PLACEMENTS), default=PLACEMENTS[0],
              help="exact: on the chosen probability; midpoint: halfway to the next lower one (same validation score).")
@click.option("--at-least-one", is_flag=True,
              help="Try keeping the most probable class of an image whose masks are all blanked; kept if it helps.")
@CHOICE_OPTION
@inference_options(batch_size=16, tta=False)  # used when val_probs.csv must be computed
def tune_threshold(run_dirs: tuple[Path, ...], weights: tuple[float, ...], data_dir: Path,
                   seg_csv: Path | None, objective: str | None, mask_shape: tuple[int, int],
                   out: Path | None, plot: Path | None, overwrite: bool, gate_files: dict[str, Path],
                   sources: list[str] | None, top_k: int, area_threshold: float, placement: str, at_least_one: bool,
                   choice: str, settings) -> None:
    """Choose per-class presence thresholds that maximise the Kaggle Dice of the blanked --seg
    predictions on the run's validation images (accuracy without --seg); write thresholds.json."""
    from cloudpipe.algorithms.presence import PixelStats
    from cloudpipe.pipeline.gate import GateInputs
    from cloudpipe.pipeline.tune import ThresholdFiles, tune_thresholds

    inputs = GateInputs(gate_files, PixelStats(top_k, area_threshold), sources, placement, try_at_least_one=at_least_one)
    result = tune_thresholds(run_dirs, data_dir, weights=weights, seg=seg_csv, objective=objective, mask_shape=mask_shape,
                             files=ThresholdFiles(out, plot, overwrite), settings=settings, inputs=inputs, choice=choice)
    click.echo(format_table(result.rows))
    if len(result.source_rows) > 1:
        click.echo("\nTuned score of each source alone and of each blend:")
        click.echo(format_table(result.source_rows))
    click.echo(result.summary())


STEPS_OPTION = click.option("--steps", default=None, callback=_names, metavar="A,B,...",
                            help=f"Post-processing steps to tune, in order: {', '.join(STEP_NAMES)} "
                                 f"[default: {','.join(DEFAULT_STEPS)}].")


@main.command("predict-seg")
@profiled
@ensemble_runs_option("Segmentation")
@click.option("--data", "data_dir", type=EXISTING_DIR, required=True, help="Kaggle-layout data folder.")
@click.option("--split", type=click.Choice(["val", "test"]), required=True,
              help="val: the run's validation images (and tune post-processing); test: the test images.")
@click.option("--out", type=NEW_PATH, default=None,
              help="Kaggle-format CSV to write, with <stem>_probs.npy/.json beside it [default for one run: "
                   "RUN/val_seg.csv or RUN/test_seg.csv].")
@click.option("--postprocess", type=EXISTING_FILE, default=None,
              help="--split test: post-processing to apply [default for one run: RUN/seg_postprocess.json; "
                   "an ensemble: required, its <stem>_postprocess.json].")
@STEPS_OPTION
@CHOICE_OPTION
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--keep-store/--no-keep-store", default=True,
              help="Keep the probabilities beside the CSV (<stem>_probs.npy, 735 MB per 1,000 images; read by tune-seg, "
                   "apply-seg and pixel-statistics gating); --no-keep-store with --overwrite also removes an earlier one.")
@inference_options(batch_size=8)
def predict_seg(run_dirs: tuple[Path, ...], weights: tuple[float, ...], data_dir: Path, split: str, out: Path | None,
                postprocess: Path | None, steps: list[str] | None, choice: str, overwrite: bool, keep_store: bool,
                settings) -> None:
    """Masks of the segmentation model (or the mean of several), post-processed, as a Kaggle-format CSV."""
    from cloudpipe.pipeline.seg_masks import Tuning
    from cloudpipe.pipeline.segment import predict_segmentation

    if out is None and len(run_dirs) > 1:
        raise click.UsageError("an ensemble of runs needs --out")
    out = out if out is not None else run_dirs[0] / f"{split}_seg.csv"
    result = predict_segmentation(run_dirs, data_dir, split, out, weights=weights, postprocess=postprocess,
                                  tuning=Tuning(steps, choice), settings=settings, overwrite=overwrite, keep_store=keep_store)
    if result is not None:  # None on the other ranks of torchrun: rank 0 joined their shares and wrote the files
        _echo_masks(result)


def _echo_masks(result) -> None:
    """What the mask commands print: the post-processing, the speed line and the files written."""
    click.echo("post-processing: " + result.postprocess.describe())
    for c, kept in result.kept.items():
        click.echo(f"{c}: {kept.reason()}")
    click.echo(result.line())
    click.echo("wrote " + ", ".join(map(str, result.written)))


STORE_WEIGHTS_OPTION = weights_option("--store", "stores")


@main.command("tune-seg")
@profiled
@click.option("--store", "stores", type=EXISTING_FILE, required=True, multiple=True,
              help="A validation probability store (<stem>_probs.npy from predict-seg --split val); repeat to average.")
@STORE_WEIGHTS_OPTION
@click.option("--data", "data_dir", type=EXISTING_DIR, required=True, help="Kaggle-layout data folder (train.csv).")
@click.option("--out", type=NEW_PATH, required=True, help="Validation masks CSV to write, with <stem>_postprocess.json.")
@STEPS_OPTION
@CHOICE_OPTION
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def tune_seg(stores: tuple[Path, ...], weights: tuple[float, ...], data_dir: Path, out: Path, steps: list[str] | None,
             choice: str, overwrite: bool) -> None:
    """Tune post-processing again from stored validation probabilities alone (no model runs)."""
    from cloudpipe.pipeline.seg_masks import Tuning, retune_segmentation

    result = retune_segmentation(stores, data_dir, out, weights=weights, tuning=Tuning(steps, choice), overwrite=overwrite)
    _echo_masks(result)


@main.command("apply-seg")
@profiled
@click.option("--store", "stores", type=EXISTING_FILE, required=True, multiple=True,
              help="A test probability store (<stem>_probs.npy from predict-seg --split test); repeat to average.")
@STORE_WEIGHTS_OPTION
@click.option("--postprocess", type=EXISTING_FILE, required=True,
              help="Post-processing tuned for the stores' runs and weights (seg_postprocess.json, <stem>_postprocess.json).")
@click.option("--data", "data_dir", type=EXISTING_DIR, required=True, help="Kaggle-layout data folder (sample_submission.csv).")
@click.option("--out", type=NEW_PATH, required=True, help="Test masks CSV to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def apply_seg(stores: tuple[Path, ...], weights: tuple[float, ...], postprocess: Path, data_dir: Path, out: Path,
              overwrite: bool) -> None:
    """Test masks from stored test probabilities and a post-processing file (no model runs)."""
    from cloudpipe.pipeline.seg_masks import apply_segmentation

    result = apply_segmentation(stores, data_dir, out, postprocess, weights=weights, overwrite=overwrite)
    _echo_masks(result)


@main.command()
@profiled
@click.option("--data", "data_dir", type=EXISTING_DIR, required=True, help="Kaggle-layout data folder (images; train.csv).")
@click.option("--seg", "seg_csv", type=EXISTING_FILE, required=True, help="Segmentation masks to score (its images are scored).")
@click.option("--run", "run_dir", type=EXISTING_DIR, default=None, help="Classifier run: val_probs.csv and thresholds.json.")
@click.option("--probs", "probs_csv", type=EXISTING_FILE, default=None, help="Presence probabilities (e.g. predict's *_probs.csv).")
@click.option("--thresholds", "thresholds_file", type=GATE_THRESHOLDS, default=None,
              help="The gate's thresholds: a thresholds.json, or one threshold T for every class "
                   "[default: RUN/thresholds.json, else tuned on these images (in-sample)].")
@click.option("--truth", "truth_csv", type=EXISTING_FILE, default=None, help="Truth masks [default: DATA/train.csv].")
@click.option("--truth-shape", type=SHAPE, default=None, metavar="H W",
              help="Mask size of --truth [default: the training images' size for train.csv, else "
                   "the profile's submission size].")
@shape_option("--mask-shape", "Mask size of --seg.")
@click.option("--out", type=NEW_PATH, default=Path("report.html"), help="HTML page to write.")
@click.option("--overlays", type=click.IntRange(min=0), default=6, help="Worst images drawn (and half as many best).")
@click.option("--overwrite", is_flag=True, help="Replace an existing page.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def report(data_dir: Path, seg_csv: Path, out: Path, overlays: int, overwrite: bool, quiet: bool, **inputs) -> None:
    """Score segmentation masks alone, gated and against the oracle, say where the Dice goes,
    and write it all as one self-contained HTML page."""
    from cloudpipe.pipeline.report import write_report

    result = write_report(data_dir, seg_csv, out, overwrite=overwrite, overlays=overlays, progress=not quiet, **inputs)
    click.echo(format_table(result.headline))
    click.echo(f"{len(result.scored.stats.images)} images in {result.seconds:.1f} s; wrote {result.path}")


@main.command("pseudo-label")
@profiled
@click.option("--data", "data_dir", type=EXISTING_DIR, required=True, help="Kaggle-layout data folder.")
@click.option("--seg", "seg_csv", type=EXISTING_FILE, required=True,
              help="The test submission whose masks become labels (e.g. predict's, from a tuned ensemble).")
@click.option("--probs", "probs_csv", type=EXISTING_FILE, default=None,
              help="Presence probabilities it was gated on [default: the submission's <stem>_probs.csv].")
@click.option("--min-confidence", type=click.FloatRange(0.5, 1, min_open=True), default=0.9,
              help="Keep an image when every class's probability is >= this or <= 1 - this.")
@click.option("--min-area", type=click.IntRange(min=0), default=0, help="... and every mask it keeps has this many pixels.")
@shape_option("--mask-shape", "Mask size of --seg.")
@click.option("--out", "out_dir", type=NEW_PATH, required=True, help="The new data folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace an --out that pseudo-label made (never another folder).")
def pseudo_label(data_dir: Path, seg_csv: Path, probs_csv: Path | None, min_confidence: float, min_area: int,
                 mask_shape: tuple[int, int], out_dir: Path, overwrite: bool) -> None:
    """Write a data folder that also trains on the test images labelled confidently by --seg;
    training on it keeps them out of every validation split (the rule is saved in pseudo.yaml)."""
    from cloudpipe.algorithms.pseudo import PseudoRule
    from cloudpipe.pipeline.pseudo import pseudo_label as write_pseudo

    probs = probs_csv or probs_path_for(seg_csv)
    rule = PseudoRule(min_confidence=min_confidence, min_area=min_area)
    click.echo(write_pseudo(data_dir, seg_csv, probs, out_dir, rule, mask_shape=mask_shape, overwrite=overwrite).line())


@main.command()
@profiled
@click.option("--seg-run", "seg_run", type=EXISTING_DIR, required=True, help="Segmentation run folder (tuned: seg_postprocess.json).")
@click.option("--classifier-run", "classifier_run", type=EXISTING_DIR, required=True,
              help="Classifier run folder (tuned: thresholds.json).")
@click.option("--out", type=NEW_PATH, required=True, help="Bundle folder to write (upload it as a Kaggle dataset).")
@click.option("--wheels-from", type=EXISTING_DIR, default=None,
              help="Copy the wheels of this folder in (a cloudpipe-*.whl among them is used instead of building one).")
@click.option("--download/--no-download", default=True,
              help="pip download the wheels Kaggle's image lacks (segmentation-models-pytorch, ...) for its Linux Python 3.11.")
@click.option("--require", multiple=True, metavar="SPEC", help="Another requirement to download (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace a bundle folder that bundle made (never another folder).")
def bundle(seg_run: Path, classifier_run: Path, out: Path, wheels_from: Path | None, download: bool,
           require: tuple[str, ...], overwrite: bool) -> None:
    """Write a folder to upload to Kaggle as a dataset: wheels, the two runs' predicting files, and a notebook
    that installs offline and writes submission.csv."""
    from cloudpipe.pipeline.bundle import make_bundle

    result = make_bundle(seg_run, classifier_run, out, wheels_from=wheels_from, download=download, require=require,
                         overwrite=overwrite)
    click.echo(f"wrote {result.out}: {len(result.wheels)} wheel(s) ({', '.join(result.wheels)}), "
               f"{len(result.files)} files, notebook {result.out / 'submit.ipynb'}")
    if result.missing:
        click.echo(f"note: no wheel in the bundle for {', '.join(result.missing)} (fine if Kaggle's image has it)")


@main.command()
@click.option("--root", type=EXISTING_DIR, default=Path("runs"), help="Folder whose training runs (at any depth) to list.")
def runs(root: Path) -> None:
    """List the training runs under --root: best validation score, epochs, and the config keys that differ between them."""
    from cloudpipe.pipeline.runs import runs_table

    rows = runs_table(root)
    click.echo(format_table(rows, left=[k for k in rows[0] if k not in ("best",)]))
    click.echo(f"{len(rows)} run(s) under {root}")


@main.command()
@click.option("--out", "out_dir", type=NEW_PATH, default=Path("demo"), help="Folder for data, runs and submissions.")
@click.option("--size", type=click.Choice(["tiny", "small", "medium"]), default="small",
              help="tiny: seconds (tests); small: a few CPU minutes; medium: tens of minutes.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out_dir: Path, size: str, overwrite: bool, quiet: bool) -> None:
    """Run the whole two-stage pipeline on synthetic data and print the test Dice."""
    from cloudpipe.pipeline.demo import run_demo

    result = run_demo(out_dir, size, overwrite=overwrite, progress=not quiet)
    click.echo("\nTest Dice (synthetic test set, Kaggle metric):")
    click.echo(format_table(result.rows))
    click.echo("\nSeconds per step: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items())
               + f" (total {sum(result.seconds.values()):.0f})")
    for what, path in result.files.items():
        click.echo(f"{what}: {path}")


@main.command()
@profiled
@click.option("--data", "data_dir", type=EXISTING_DIR, required=True, help="Kaggle-layout data folder.")
@click.option("--image", required=True, help="Image file name in DATA's image folders (e.g. 0011165.jpg), or a path to it.")
@click.option("--pred", type=EXISTING_FILE, default=None, help="Submission CSV whose masks to draw.")
@shape_option("--mask-shape", "Mask size of --pred.")
@click.option("--truth", "truth_csv", type=EXISTING_FILE, default=None,
              help="Truth masks to draw, e.g. test_truth.csv for a test image [default: DATA/train.csv for a train image].")
@click.option("--truth-shape", type=SHAPE, default=None, metavar="H W",
              help="Mask size of --truth [default: the training images' size for train.csv, else "
                   "the profile's submission size].")
@click.option("--out", type=NEW_PATH, default=Path("overlay.png"), help="PNG file to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing PNG.")
def show(data_dir: Path, image: str, pred: Path | None, mask_shape: tuple[int, int], truth_csv: Path | None,
         truth_shape: tuple[int, int] | None, out: Path, overwrite: bool) -> None:
    """Draw an image with its truth and/or predicted masks, one panel per class (Dice in its title when both)."""
    from cloudpipe.show import show_image

    click.echo(f"wrote {show_image(data_dir, image, out, pred=pred, mask_shape=mask_shape, truth_csv=truth_csv, truth_shape=truth_shape, overwrite=overwrite)}")
