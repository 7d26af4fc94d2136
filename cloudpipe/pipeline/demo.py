"""``cloudpipe demo``: the whole two-stage pipeline on synthetic data, through the same library
functions as the real commands (no demo-only code paths), with a final table."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from cloudpipe.configs import read_packaged
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.profile import active
from cloudpipe.data.beside import probs_path_for
from cloudpipe.data.synth import TEST_TRUTH_CSV

log = logging.getLogger(__name__)
Size = Literal["tiny", "small", "medium"]
T = TypeVar("T")


@dataclass
class DemoResult:
    """Where the demo wrote things, its Dice table and the seconds each step took."""

    out_dir: Path
    rows: list[dict] = field(default_factory=list)  # the report's headline rows on the synthetic test set
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


def run_demo(out_dir: Path, size: Size = "small", *, overwrite: bool = False, progress: bool = True) -> DemoResult:
    """Generate data, train and predict both stages, tune thresholds, gate, and evaluate, each
    step logged; returns the report's headline on the synthetic test set.

    Writes ``out_dir/data``, ``out_dir/runs/{seg,classifier}``, ``out_dir/submissions/`` and
    ``out_dir/report.html``, built beside ``out_dir`` and swapped in at the end: ``out_dir``
    absent or empty, or (``overwrite``) a demo's. The sizes' settings are configs/demo.yaml's.
    """
    from cloudpipe.engine.runner import Plan, Runner

    sizes, out_dir = read_packaged("demo.yaml"), Path(out_dir)
    if size not in sizes:
        raise CloudpipeError(f"unknown demo size {size!r}; choose one of {', '.join(sizes)}")
    settings = sizes[size]
    with Runner.start() as run:
        run.claim(lambda: (Plan(builds={out_dir: "demo"}, overwrite=overwrite), None))
        return run.write_folder(out_dir, lambda folder: _demo(folder, out_dir, settings, progress))


def _demo(folder: Path, out_dir: Path, settings: dict[str, Any], progress: bool) -> DemoResult:
    """The work of :func:`run_demo`, in the empty ``folder`` that becomes ``out_dir``."""
    from cloudpipe.data.synth import make_dataset
    from cloudpipe.engine.config import load_config
    from cloudpipe.engine.settings import InferenceSettings
    from cloudpipe.engine.train import train_run
    from cloudpipe.pipeline.predict import predict_submission
    from cloudpipe.pipeline.report import write_report
    from cloudpipe.pipeline.segment import predict_segmentation
    from cloudpipe.pipeline.tune import tune_thresholds

    data, runs, subs = folder / "data", folder / "runs", folder / "submissions"
    seg_run, cls_run = runs / "seg", runs / "classifier"
    result = DemoResult(out_dir)

    def step(name: str, fn: Callable[[], T]) -> T:
        log.info(f"== {name}")
        started = time.perf_counter()
        value = fn()
        result.seconds[name] = time.perf_counter() - started
        return value

    log.info(f"building the demo in {folder} (hidden; it becomes {out_dir} once complete)")
    d = settings["data"]
    step("synth", lambda: make_dataset(data, train=d["train"], test=d["test"], shape=(d["height"], d["width"]),
                                       seed=d["seed"], progress=progress))
    seg_config = load_config("segmentation", overrides={**settings["seg"], "weights": "none"})
    step("train-seg", lambda: train_run(seg_config, data, seg_run, progress=progress))
    val_seg, test_seg = seg_run / "val_seg.csv", seg_run / "test_seg.csv"
    seg_settings = InferenceSettings(batch_size=8, workers=seg_config.workers, progress=progress)
    log.info(step("predict-seg val", lambda: predict_segmentation(seg_run, data, "val", val_seg, settings=seg_settings)).line())
    log.info(step("predict-seg test", lambda: predict_segmentation(seg_run, data, "test", test_seg, settings=seg_settings)).line())
    cls_config = load_config("classifier", overrides={**settings["classifier"], "weights": "none"})
    step("train-classifier", lambda: train_run(cls_config, data, cls_run, progress=progress))
    cls_settings = InferenceSettings(workers=cls_config.workers, progress=progress)
    tuned = step("tune-threshold", lambda: tune_thresholds(cls_run, data, seg=val_seg, settings=cls_settings))
    log.info(tuned.summary())
    gated = subs / "submission.csv"
    log.info(step("predict", lambda: predict_submission(test_seg, cls_run, data, gated, settings=cls_settings)).line())
    page = step("report", lambda: write_report(
        data, test_seg, folder / "report.html", progress=progress, probs_csv=probs_path_for(gated),
        thresholds_file=tuned.json_path, truth_csv=data / TEST_TRUTH_CSV, truth_shape=active().submission_size))
    result.rows = page.headline
    files = {"data": data, "segmentation run": seg_run, "classifier run": cls_run, "threshold plot": tuned.plot_path,
             "submission": gated, "report": page.path}
    result.files = {what: out_dir / Path(path).relative_to(folder) for what, path in files.items()}
    return result
