"""Quality on real clouds: the whole pipeline on ``../shared/data/clouds350``, ending in a report.

    .venv/bin/python benchmarks/real_clouds.py                    # as benchmarks/real_clouds.yaml says
    .venv/bin/python benchmarks/real_clouds.py --work /tmp/rc      # where runs, CSVs and the report go
    .venv/bin/python benchmarks/real_clouds.py --smoke             # a tiny budget (tests, CI)

Trains the segmentation run(s) and the classifier on the clouds350 train images (random
weights, CPU budget), predicts the validation and test masks of each run and of their
probability-level ensemble (with several runs), tunes the presence thresholds on the
validation images, gates the test masks, and writes a report per segmentation
(``gated/<name>/report.html``: test images, scored against ``test_truth.csv``) and
``report_val.html`` (the first run's validation images). Steps whose outputs exist in ``--work`` are
not run again, so a second call (e.g. after changing only post-processing) costs seconds.
Prints the headline table and the wall time of every step; ``results.json`` keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

if __package__ in (None, ""):  # run as a script: make `cloudpipe` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudpipe.core.competition import SUBMISSION_SHAPE  # noqa: E402
from cloudpipe.core.table import format_table  # noqa: E402
from cloudpipe.data.beside import postprocess_path_for, probs_path_for, store_paths
from cloudpipe.data.kaggle import SAMPLE_SUBMISSION_CSV, TEST_IMAGES, TRAIN_CSV, TRAIN_IMAGES  # noqa: E402
from cloudpipe.data.runfolder import BEST_PT, LAST_PT  # noqa: E402

HERE = Path(__file__).resolve().parent
SMOKE = {"train_images": 40, "seg": {"unet_r18": {"arch": "tiny", "image_size": [64, 96], "epochs": 1, "batch_size": 8},
                                     "other": {"arch": "tiny", "image_size": [32, 64], "epochs": 1, "batch_size": 8}},
         "classifier": {"arch": "tiny", "image_size": [64, 96], "epochs": 1, "batch_size": 8, "accumulate": 1, "freeze": []},
         "workers": 0, "test_images": 12, "overlays": 1}


def prepare_data(source: Path, work: Path, train_images: int, test_images: int | None) -> Path:
    """A Kaggle-layout folder in ``work/data`` holding the first ``train_images`` rows of the
    source's ``train.csv`` (and the first ``test_images`` test images), with the image folders
    linked, not copied."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    train = pd.read_csv(source / TRAIN_CSV, dtype=str, keep_default_na=False)
    train.iloc[: 4 * train_images].to_csv(data / TRAIN_CSV, index=False)
    sample = pd.read_csv(source / SAMPLE_SUBMISSION_CSV, dtype=str, keep_default_na=False)
    truth = pd.read_csv(source / "test_truth.csv", dtype=str, keep_default_na=False)
    if test_images is not None:
        sample, truth = sample.iloc[: 4 * test_images], truth.iloc[: 4 * test_images]
    sample.to_csv(data / SAMPLE_SUBMISSION_CSV, index=False)
    truth.to_csv(data / "test_truth.csv", index=False)
    for folder in (TRAIN_IMAGES, TEST_IMAGES):
        link = data / folder
        if not link.exists():
            link.symlink_to((source / folder).resolve(), target_is_directory=True)
    return data


def arguments(doc: str, config: str, work: str) -> argparse.ArgumentParser:
    """The options every real-cloud benchmark takes: its YAML, its work folder, the data, smoke."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / config)
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / work)
    parser.add_argument("--data", type=Path, default=None, help="clouds350 folder [default: the config's]")
    parser.add_argument("--smoke", action="store_true", help="tiny stand-in models on a few images: checks the script runs")
    return parser


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


def finished(run: Path, epochs: int) -> bool:
    """A run folder whose training went through all its epochs."""
    from cloudpipe.engine.checkpoint import load_checkpoint

    return (run / BEST_PT).exists() and (run / LAST_PT).exists() and load_checkpoint(run / LAST_PT)["epoch"] >= epochs


def main(argv: list[str] | None = None) -> dict:
    args = arguments(__doc__, "real_clouds.yaml", "cloudpipe-real").parse_args(argv)

    from cloudpipe.data.probstore import read_store
    from cloudpipe.engine.config import load_config
    from cloudpipe.engine.settings import InferenceSettings
    from cloudpipe.engine.train import train_run
    from cloudpipe.pipeline.predict import predict_submission
    from cloudpipe.pipeline.report import write_report
    from cloudpipe.pipeline.seg_masks import retune_segmentation
    from cloudpipe.pipeline.segment import predict_segmentation
    from cloudpipe.pipeline.tune import ThresholdFiles, tune_thresholds

    settings = yaml.safe_load(args.config.read_text())
    if args.smoke:
        settings.update(SMOKE)
    source = args.data or (HERE.parent / settings["data"]).resolve()  # relative to the repository
    work = args.work
    step = Timed()
    seconds = step.seconds
    extra: dict[str, float] = {}
    started = time.perf_counter()

    data = prepare_data(source, work, settings["train_images"], settings.get("test_images"))
    workers = settings["workers"]
    infer = InferenceSettings(batch_size=16, workers=workers, progress=False)
    seg_csvs = {}
    for name, overrides in settings["seg"].items():
        config = load_config("segmentation", overrides={**overrides, "weights": "none", "workers": workers})
        run = work / "runs" / name
        if not finished(run, config.epochs):
            step(f"train-seg {name}", train_run, config, data, run, resume=run.exists(), progress=False)
        val_csv, test_csv = run / "val_seg.csv", run / "test_seg.csv"
        step(f"predict-seg val {name}", predict_segmentation, run, data, "val", val_csv, settings=infer, overwrite=True)
        step(f"predict-seg test {name}", predict_segmentation, run, data, "test", test_csv, settings=infer, overwrite=True)
        seg_csvs[name] = (val_csv, test_csv)
    if len(seg_csvs) > 1:  # the probability-level ensemble of every segmentation run
        runs, folder = [work / "runs" / name for name in seg_csvs], work / "ensemble"
        val_csv, test_csv = folder / "val_seg.csv", folder / "test_seg.csv"
        step("predict-seg val ensemble", predict_segmentation, runs, data, "val", val_csv, settings=infer, overwrite=True)
        step("predict-seg test ensemble", predict_segmentation, runs, data, "test", test_csv, settings=infer, overwrite=True,
             postprocess=postprocess_path_for(val_csv))
        store = store_paths(val_csv)[0]
        step("tune-seg ensemble (from stores)", retune_segmentation, [store], data, folder / "retuned_val_seg.csv", overwrite=True)
        extra["store MB per 1,000 images"] = round(store.stat().st_size / 1e6 * 1000 / len(read_store(store)[1].images), 1)
        extra["re-tune from stores, s"] = seconds["tune-seg ensemble (from stores)"]
        seg_csvs["ensemble"] = (val_csv, test_csv)

    config = load_config("classifier", overrides={**settings["classifier"], "weights": "none", "workers": workers})
    classifier = work / "runs" / "classifier"
    if not finished(classifier, config.epochs):
        step("train-classifier", train_run, config, data, classifier, resume=classifier.exists(), progress=False)
    overlays = settings.get("overlays", 6)
    comparison, reports = [], {}
    for name, (val_csv, test_csv) in seg_csvs.items():
        folder = work / "gated" / name
        thresholds = folder / "thresholds.json"
        step(f"tune-threshold {name}", tune_thresholds, classifier, data, seg=val_csv, files=ThresholdFiles(thresholds, overwrite=True),
             settings=infer)
        submission = folder / "submission.csv"
        step(f"predict {name}", predict_submission, test_csv, classifier, data, submission, thresholds=thresholds,
             settings=infer, overwrite=True)
        reports[name] = step(f"report test {name}", write_report, data, test_csv, folder / "report.html", overwrite=True,
                             progress=False, overlays=overlays, probs_csv=probs_path_for(submission),
                             thresholds_file=thresholds, truth_csv=data / "test_truth.csv", truth_shape=SUBMISSION_SHAPE)
        rows = {r["submission"]: r["mean"] for r in reports[name].headline}
        comparison.append({"segmentation": name, "alone": rows["segmentation alone"], "gated at 0.5": rows["gated at 0.5"],
                           "gated, tuned": rows["gated, tuned thresholds"], "oracle": rows["gated by true presence (oracle)"]})
    first = next(iter(seg_csvs))
    step("report val", write_report, data, seg_csvs[first][0], work / "report_val.html", overwrite=True, progress=False,
         overlays=overlays, run_dir=classifier, thresholds_file=work / "gated" / first / "thresholds.json")
    test_report = reports[first]
    total = time.perf_counter() - started
    print(f"\nTest images (clouds350 test_truth.csv), Kaggle Dice, segmentation {first}:")
    print(format_table(test_report.headline))
    print("\nMean Dice on the test images, per segmentation:")
    print(format_table(comparison))
    for key, value in extra.items():
        print(f"{key}: {value}")
    print(f"\nwall time {total / 60:.1f} min; steps: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(f"report: {test_report.path}")
    results = {"headline": test_report.headline, "comparison": comparison, **extra, "seconds": seconds,
               "total_seconds": round(total, 1), "config": settings, "test_images": len(test_report.scored.stats.images)}
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
