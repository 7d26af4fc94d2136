"""The set-up every suite shares: the one entry's parser, sizes, the cached synthetic data,
clouds350 subsets, the pipeline (train, predict-seg, tune-threshold, predict, report) as one
function, step timing, interleaved timing, rows and the table.

A row is a dict: ``benchmark`` (its name), ``seed_s`` and ``cloudpipe_s`` (the two sides' times
in seconds, or whatever ``unit``/``scale`` say), ``ratio`` (baseline / cloudpipe), ``target``
(the ratio asked for, or None), ``target_op`` (``>=``, the default, or ``<=``) and ``note``.
Rows without a baseline (throughput only) carry ``value`` and ``unit`` instead of the times.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cloudpipe.core import table
from cloudpipe.core.profile import active
from cloudpipe.data.kaggle import SAMPLE_SUBMISSION_CSV, TEST_IMAGES, TRAIN_CSV, TRAIN_IMAGES

if TYPE_CHECKING:
    from cloudpipe.engine.settings import InferenceSettings

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
REAL_IMAGES = ROOT.parent / "shared" / "data" / "real" / "train_images"
CLOUDS350 = ROOT.parent / "shared" / "data" / "clouds350"
SUITES = ("speed", "scale", "gpu", "competition", "clouds", "wins", "carry", "recipes")
"""The suites of ``python -m benchmarks SUITE``, each a module of :mod:`benchmarks.suites`."""


@dataclass(frozen=True)
class Sizes:
    """The sizes a benchmark runs at: the JPEGs, the classifier's input and the segmentation
    model's (None: ``configs/seg.yaml``'s); ``smoke`` says the run only checks that the scripts
    work (CI), its figures mean nothing."""

    image_shape: tuple[int, int] = active().image_size
    cls_size: tuple[int, int] = (512, 768)
    seg_size: tuple[int, int] | None = None
    smoke: bool = False


FULL = Sizes()
SMOKE = Sizes(image_shape=(140, 210), cls_size=(64, 96), seg_size=(32, 48), smoke=True)


def cache_dir() -> Path:
    """Where made data and throw-away runs are kept between runs: ``$CLOUDPIPE_BENCH_CACHE``,
    else ``$TMPDIR/cloudpipe-bench``."""
    return Path(os.environ.get("CLOUDPIPE_BENCH_CACHE", Path(tempfile.gettempdir()) / "cloudpipe-bench"))


def synthetic_data(train: int, test: int, shape: tuple[int, int] = active().image_size, seed_: int = 0) -> Path:
    """A cached ``cloudpipe.data.synth`` dataset (made once, then reused; ~0.2 s per 1400x2100 image).

    The folder is written under a temporary name and renamed into place, so an interrupted
    run never leaves a half-made cache behind.
    """
    from cloudpipe.data.synth import make_dataset

    cache = cache_dir()
    out = cache / f"synth-{shape[0]}x{shape[1]}-train{train}-test{test}-seed{seed_}"
    if (out / "test_truth.csv").is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".making-"))
    make_dataset(tmp / "data", train=train, test=test, shape=shape, seed=seed_, progress=False)
    try:
        os.replace(tmp / "data", out)
    except OSError:  # made meanwhile by another process
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def repeat_images(source: Path, originals: Sequence[str], n: int, folder: Path,
                  name_of: Callable[[str, int], str]) -> list[str]:
    """``n`` symlinks in ``folder`` to the ``originals`` in ``source``, cycled, the i-th named
    ``name_of(original, i)`` (a larger set than was made, every file decoded every time);
    returns the names in order."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        original = originals[i % len(originals)]
        name = name_of(original, i)
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(source / original)
        names.append(name)
    return names


def over(fn: Callable[[object], object], items: Sequence) -> Callable[[], None]:
    """A zero-argument function that calls ``fn`` on every item, keeping no result (a pass for
    :func:`time_interleaved`)."""

    def one_pass() -> None:
        for item in items:
            fn(item)

    return one_pass


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: bool = False) -> dict[str, float]:
    """Best-of-``repeats`` seconds of each zero-argument function, calls interleaved so that
    load from other processes hits every side alike; ``warmup`` calls each once first, untimed."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(t) for name, t in times.items()}


def row(benchmark: str, seed_s: float, ours_s: float, target: float | None, unit: str = "ms", scale: float = 1e3,
        **extra) -> dict:
    """A comparison row: times in seconds, ``ratio`` = baseline / cloudpipe; ``unit``/``scale``
    say how the times are printed (``ms`` and 1e3 by default)."""
    return {"benchmark": benchmark, "seed_s": seed_s, "cloudpipe_s": ours_s, "ratio": seed_s / ours_s,
            "target": target, "unit": unit, "scale": scale, **extra}


def info_row(benchmark: str, value: float, unit: str, note: str = "", **extra) -> dict:
    """A row without a baseline: one figure (images/s, seconds...)."""
    return {"benchmark": benchmark, "value": value, "unit": unit, "note": note, **extra}


def met(r: dict) -> bool | None:
    """Whether a row meets its target (``target_op`` ``>=``, the default, or ``<=``); None
    without a target."""
    if r.get("target") is None or "ratio" not in r:
        return None
    return r["ratio"] >= r["target"] if r.get("target_op", ">=") == ">=" else r["ratio"] <= r["target"]


def format_table(rows: Sequence[dict], baseline: str = "seed") -> str:
    """Rows as a fixed-width text table (:func:`cloudpipe.core.table.format_table`); ``baseline``
    heads the baseline column."""
    shown = []
    for r in rows:
        scale, ok = r.get("scale", 1e3), met(r)
        compared = "ratio" in r
        shown.append({"benchmark": r["benchmark"], "unit": r.get("unit", "ms"),
                      baseline: f"{r['seed_s'] * scale:.3f}" if compared else "",
                      "cloudpipe": f"{r['cloudpipe_s'] * scale:.3f}" if compared else f"{r['value']:.3g}",
                      "ratio": f"{r['ratio']:.2f}x" if compared else "",
                      "target": "" if not compared or r["target"] is None else f"{r.get('target_op', '>=')}{r['target']:g}x",
                      " ": "" if ok is None else ("met" if ok else "MISSED"), "note": r.get("note", "")})
    return table.format_table(shown, left=("benchmark", "note"))


def summary(rows: Sequence[dict]) -> str:
    """``"N targets met, M missed (names)"``."""
    missed = [r["benchmark"] for r in rows if met(r) is False]
    return (f"{sum(met(r) is True for r in rows)} targets met, {len(missed)} missed"
            + (f" ({', '.join(missed)})" if missed else ""))


def load_average() -> str:
    """The 1/5/15-minute load averages, for the header and footer of a run."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


# --- the one entry ------------------------------------------------------------------------------


def parser(name: str) -> argparse.ArgumentParser:
    """The options of suite ``name``: every suite's (``--smoke``, ``--json``), a work folder and
    the clouds350 folder where the suite declares ``WORK``, then its own (its ``options``)."""
    suite = importlib.import_module(f"benchmarks.suites.{name}")
    out = argparse.ArgumentParser(prog=f"python -m benchmarks {name}", description=suite.MEASURES)
    out.add_argument("--smoke", action="store_true", help="tiny sizes and stand-in models: only checks that the suite runs")
    out.add_argument("--json", type=Path, help="also write the results here as JSON")
    if getattr(suite, "WORK", None):
        out.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / suite.WORK,
                         help="where data, runs and results go (trained runs are reused)")
        out.add_argument("--data", type=Path, default=CLOUDS350, help="the clouds350 folder")
    suite.options(out)
    return out


def jsonable(value: object) -> object:
    """What JSON cannot hold as it is: NumPy values as Python ones, anything else (paths) as text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def run_suite(name: str, argv: Sequence[str] = ()) -> object:
    """Run suite ``name`` with the command-line options ``argv``; its results (rows or a dict)."""
    args = parser(name).parse_args(list(argv))
    results = importlib.import_module(f"benchmarks.suites.{name}").run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=jsonable) + "\n")
    return results


# --- steps, data and the pipeline ---------------------------------------------------------------


class Timed:
    """Runs named steps, printing the wall time of each and keeping it in :attr:`seconds`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn, *args, **kwargs):
        started = time.perf_counter()
        value = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - started, 1)
        print(f"== {name}: {self.seconds[name]:.1f} s", flush=True)
        return value


def prepare_data(source: Path, data: Path, train_images: int, test_images: int | None) -> Path:
    """A Kaggle-layout folder ``data`` holding the first ``train_images`` images of the source's
    ``train.csv`` (and the first ``test_images`` test images, all with None; their truth where the
    source has ``test_truth.csv``), the image folders linked, not copied."""
    data.mkdir(parents=True, exist_ok=True)
    read = lambda name: pd.read_csv(source / name, dtype=str, keep_default_na=False)  # noqa: E731
    read(TRAIN_CSV).iloc[: 4 * train_images].to_csv(data / TRAIN_CSV, index=False)
    for name in (SAMPLE_SUBMISSION_CSV, "test_truth.csv"):
        if (source / name).is_file():
            frame = read(name)
            (frame if test_images is None else frame.iloc[: 4 * test_images]).to_csv(data / name, index=False)
    for folder in (TRAIN_IMAGES, TEST_IMAGES):
        if not (data / folder).exists():
            (data / folder).symlink_to((source / folder).resolve(), target_is_directory=True)
    return data


def finished(run: Path, epochs: int, folds: int = 0) -> bool:
    """A run folder whose training (every fold's, with ``folds``) went through all its epochs."""
    from cloudpipe.data.runfolder import BEST_PT, LAST_PT, fold_dir
    from cloudpipe.engine.checkpoint import load_checkpoint

    return all((m / BEST_PT).exists() and (m / LAST_PT).exists() and load_checkpoint(m / LAST_PT)["epoch"] >= epochs
               for m in ([fold_dir(run, f) for f in range(folds)] if folds else [run]))


@dataclass(frozen=True)
class Outputs:
    """What :meth:`Bench.pipeline` wrote: the validation and test masks, and with a classifier
    the thresholds and the gated submission, with a report its page."""

    val: Path
    test: Path
    thresholds: Path | None = None
    submission: Path | None = None
    report: object = None


@dataclass
class Bench:
    """A suite's pipeline on one data folder: its inference settings and its timed steps."""

    data: Path
    infer: InferenceSettings
    step: Timed = field(default_factory=Timed)

    def train(self, task: str, overrides: dict, run: Path, reuse: bool = True) -> Path:
        """``run`` trained from random weights (unless ``overrides`` name others) as the
        packaged ``task`` config with ``overrides`` says; a finished run is kept with ``reuse``."""
        from cloudpipe import load_config, train_run

        config = load_config(task, overrides={"weights": "none", **overrides})
        if not (reuse and finished(run, config.epochs, config.folds)):
            self.step(f"train-{'seg' if task == 'segmentation' else task} {run.name}", train_run, config, self.data, run,
                      resume=reuse and run.exists(), progress=False)
        return run

    def pipeline(self, label: str, runs: Path | list[Path] | None, masks_dir: Path, classifier: Path | None = None,
                 gate_dir: Path | None = None, *, masks: tuple[Path, Path] | None = None,
                 seg_settings: InferenceSettings | None = None,
                 postprocess: Path | None = None, reuse: bool = False, inputs: dict | None = None,
                 test_inputs: dict | None = None, tune: dict | None = None, report: dict | None = None) -> Outputs:
        """predict-seg of ``runs`` (one, or several averaged) on the validation and the test images
        into ``masks_dir`` (``val_seg.csv``, ``test_seg.csv``; ``masks``: those two already made;
        ``reuse``: kept where their stores exist; ``postprocess``: the test's file, default the
        run's own, an ensemble's beside its validation CSV), then with a ``classifier``
        tune-threshold on the validation masks (``inputs``: files, ``tune``: other
        :class:`~cloudpipe.pipeline.gate.GateInputs` fields) and predict of the test masks
        (``test_inputs``) into ``gate_dir``, then with ``report`` (write_report's options) the
        test report there. Steps are timed as ``predict-seg val LABEL`` and so on."""
        from cloudpipe import predict_segmentation, predict_submission, tune_thresholds
        from cloudpipe.data.beside import postprocess_path_for, probs_path_for, store_paths
        from cloudpipe.pipeline.gate import GateInputs
        from cloudpipe.pipeline.tune import ThresholdFiles

        if masks is None:
            masks_dir.mkdir(parents=True, exist_ok=True)
            masks = masks_dir / "val_seg.csv", masks_dir / "test_seg.csv"
            if postprocess is None and isinstance(runs, list) and len(runs) > 1:
                postprocess = postprocess_path_for(masks[0])
            for split, csv in zip(("val", "test"), masks):
                if not (reuse and store_paths(csv)[0].exists()):
                    self.step(f"predict-seg {split} {label}", predict_segmentation, runs, self.data, split, csv,
                              settings=seg_settings or self.infer, overwrite=True,
                              **({"postprocess": postprocess} if split == "test" and postprocess else {}))
        if classifier is None:
            return Outputs(*masks)
        gate_dir = gate_dir or masks_dir
        gate_dir.mkdir(parents=True, exist_ok=True)
        thresholds, submission = gate_dir / "thresholds.json", gate_dir / "submission.csv"
        self.step(f"tune-threshold {label}", tune_thresholds, classifier, self.data, seg=masks[0],
                  files=ThresholdFiles(thresholds, overwrite=True), settings=self.infer,
                  inputs=GateInputs(inputs or {}, **(tune or {})))
        self.step(f"predict {label}", predict_submission, masks[1], classifier, self.data, submission,
                  thresholds=thresholds, settings=self.infer, overwrite=True, inputs=GateInputs(test_inputs or {}))
        page = None
        if report is not None:
            from cloudpipe.pipeline.report import write_report

            page = self.step(f"report test {label}", write_report, self.data, masks[1], gate_dir / "report.html",
                             overwrite=True, progress=False, probs_csv=probs_path_for(submission), thresholds_file=thresholds,
                             truth_csv=self.data / "test_truth.csv", truth_shape=active().submission_size, **report)
        return Outputs(*masks, thresholds, submission, page)

    def dice(self, csv: Path) -> dict[str, float]:
        """Kaggle Dice of a test mask CSV against ``test_truth.csv``, per class and ``mean``."""
        from cloudpipe import evaluate_files

        return evaluate_files(self.data / "test_truth.csv", csv, active().submission_size, active().submission_size).table
