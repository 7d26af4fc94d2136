"""Quality on real clouds: the whole pipeline on ``../shared/data/clouds350``, ending in a report.

    .venv/bin/python benchmarks/real_clouds.py                    # as benchmarks/real_clouds.yaml says
    .venv/bin/python benchmarks/real_clouds.py --work /tmp/rc      # where runs, CSVs and the report go
    .venv/bin/python benchmarks/real_clouds.py --smoke             # a tiny budget (tests, CI)

Trains the segmentation run(s) and the classifier on the clouds350 train images (random
weights, CPU budget), predicts the validation and test masks, tunes the presence thresholds on
the validation images, gates the test masks, and writes ``report.html`` (test images, scored
against ``test_truth.csv``) and ``report_val.html``. Steps whose outputs exist in ``--work`` are
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

from cloudpipe.cli import format_table  # noqa: E402
from cloudpipe.core.competition import SUBMISSION_SHAPE  # noqa: E402
from cloudpipe.data.kaggle import SAMPLE_SUBMISSION_CSV, TEST_IMAGES, TRAIN_CSV, TRAIN_IMAGES  # noqa: E402
from cloudpipe.data.runfolder import BEST_PT, LAST_PT  # noqa: E402

HERE = Path(__file__).resolve().parent
SMOKE = {"train_images": 40, "seg": {"unet_r18": {"arch": "tiny", "image_size": [64, 96], "epochs": 1, "batch_size": 8}},
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


def finished(run: Path, epochs: int) -> bool:
    """A run folder whose training went through all its epochs."""
    from cloudpipe.engine.checkpoint import load_checkpoint

    return (run / BEST_PT).exists() and (run / LAST_PT).exists() and load_checkpoint(run / LAST_PT)["epoch"] >= epochs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "real_clouds.yaml")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "cloudpipe-real")
    parser.add_argument("--data", type=Path, default=None, help="clouds350 folder [default: the config's]")
    parser.add_argument("--smoke", action="store_true", help="tiny stand-in models on a few images: checks the script runs")
    args = parser.parse_args(argv)

    from cloudpipe.engine.config import load_config
    from cloudpipe.engine.settings import InferenceSettings
    from cloudpipe.engine.train import train_run
    from cloudpipe.pipeline.predict import predict_submission
    from cloudpipe.pipeline.report import write_report
    from cloudpipe.pipeline.segment import predict_segmentation
    from cloudpipe.pipeline.tune import tune_thresholds

    settings = yaml.safe_load(args.config.read_text())
    if args.smoke:
        settings.update(SMOKE)
    source = args.data or (HERE.parent / settings["data"]).resolve()  # relative to the repository
    work = args.work
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def step(name: str, fn, *args, **kwargs):
        t = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - t, 1)
        print(f"== {name}: {seconds[name]:.1f} s", flush=True)
        return value

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
    val_seg, test_seg = next(iter(seg_csvs.values()))

    config = load_config("classifier", overrides={**settings["classifier"], "weights": "none", "workers": workers})
    classifier = work / "runs" / "classifier"
    if not finished(classifier, config.epochs):
        step("train-classifier", train_run, config, data, classifier, resume=classifier.exists(), progress=False)
    step("tune-threshold", tune_thresholds, classifier, data, seg=val_seg, settings=infer)
    submission = work / "submission.csv"
    step("predict", predict_submission, test_seg, classifier, data, submission, settings=infer, overwrite=True)
    overlays = settings.get("overlays", 6)
    test_report = step("report test", write_report, data, test_seg, work / "report.html", overwrite=True, progress=False,
                       overlays=overlays, probs_csv=work / "submission_probs.csv", thresholds_file=classifier / "thresholds.json",
                       truth_csv=data / "test_truth.csv", truth_shape=SUBMISSION_SHAPE)
    step("report val", write_report, data, val_seg, work / "report_val.html", overwrite=True, progress=False,
         overlays=overlays, run_dir=classifier)
    total = time.perf_counter() - started
    print("\nTest images (clouds350 test_truth.csv), Kaggle Dice:")
    print(format_table(test_report.headline))
    print(f"\nwall time {total / 60:.1f} min; steps: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(f"report: {test_report.path}")
    results = {"headline": test_report.headline, "seconds": seconds, "total_seconds": round(total, 1),
               "config": settings, "test_images": len(test_report.scored.stats.images)}
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
