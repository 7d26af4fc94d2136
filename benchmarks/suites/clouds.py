"""Quality on real clouds: the whole pipeline on clouds350 with the CPU budget of
benchmarks/clouds.yaml, ending in a report per segmentation (``gated/<name>/report.html``, test
images scored against ``test_truth.csv``) and ``report_val.html`` (the first run's validation
images). Trained runs in ``--work`` are reused, so a second call (e.g. after changing only
post-processing) costs minutes; ``results.json`` keeps the tables and every step's seconds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from benchmarks.common import HERE, Bench, prepare_data
from cloudpipe.core.table import format_table

MEASURES = "clouds350: Kaggle Dice of the masks, gated, oracle; three runs and their ensemble (CPU budget)"
WORK = "cloudpipe-real"
SMOKE = {"train_images": 40, "seg": {"unet_r18": {"arch": "tiny", "image_size": [64, 96], "epochs": 1, "batch_size": 8},
                                     "other": {"arch": "tiny", "image_size": [32, 64], "epochs": 1, "batch_size": 8}},
         "classifier": {"arch": "tiny", "image_size": [64, 96], "epochs": 1, "batch_size": 8, "accumulate": 1, "freeze": []},
         "workers": 0, "test_images": 12, "overlays": 1}


def options(parser) -> None:
    parser.add_argument("--config", type=Path, default=HERE / "clouds.yaml", help="the budget [default: benchmarks/clouds.yaml]")


def settings_of(args) -> dict:
    """The budget: ``--config`` (with ``--smoke``, its tiny stand-ins)."""
    settings = yaml.safe_load(args.config.read_text())
    return {**settings, **SMOKE} if args.smoke else settings


def bench_of(args, settings: dict) -> Bench:
    """The suite's pipeline on its clouds350 subset in ``--work/data``."""
    from cloudpipe import InferenceSettings

    data = prepare_data(args.data, args.work / "data", settings["train_images"], settings.get("test_images"))
    return Bench(data, InferenceSettings(batch_size=16, workers=settings["workers"], progress=False))


def run(args) -> dict:
    from cloudpipe.data.beside import store_paths
    from cloudpipe.data.probstore import read_store
    from cloudpipe.pipeline.seg_masks import retune_segmentation

    settings = settings_of(args)
    work, started = args.work, time.perf_counter()
    bench = bench_of(args, settings)
    step, workers, extra = bench.step, settings["workers"], {}
    masks = {}
    for name, overrides in settings["seg"].items():
        run = bench.train("segmentation", {**overrides, "workers": workers}, work / "runs" / name)
        masks[name] = bench.pipeline(name, run, run)
    if len(masks) > 1:  # the probability-level ensemble of every segmentation run
        masks["ensemble"] = out = bench.pipeline("ensemble", [work / "runs" / name for name in masks], work / "ensemble")
        store = store_paths(out.val)[0]
        step("tune-seg ensemble (from stores)", retune_segmentation, [store], bench.data, out.val.parent / "retuned_val_seg.csv",
             overwrite=True)
        extra["store MB per 1,000 images"] = round(store.stat().st_size / 1e6 * 1000 / len(read_store(store)[1].images), 1)
        extra["re-tune from stores, s"] = step.seconds["tune-seg ensemble (from stores)"]
    classifier = bench.train("classifier", {**settings["classifier"], "workers": workers}, work / "runs" / "classifier")
    overlays = settings.get("overlays", 6)
    comparison, reports = [], {}
    for name, out in masks.items():
        reports[name] = bench.pipeline(name, None, work / "gated" / name, classifier, masks=(out.val, out.test),
                                       report={"overlays": overlays}).report
        rows = {r["submission"]: r["mean"] for r in reports[name].headline}
        comparison.append({"segmentation": name, "alone": rows["segmentation alone"], "gated at 0.5": rows["gated at 0.5"],
                           "gated, tuned": rows["gated, tuned thresholds"], "oracle": rows["gated by true presence (oracle)"]})
    from cloudpipe.pipeline.report import write_report

    first = next(iter(masks))
    step("report val", write_report, bench.data, masks[first].val, work / "report_val.html", overwrite=True, progress=False,
         overlays=overlays, run_dir=classifier, thresholds_file=work / "gated" / first / "thresholds.json")
    test_report = reports[first]
    total = time.perf_counter() - started
    print(f"\nTest images (clouds350 test_truth.csv), Kaggle Dice, segmentation {first}:")
    print(format_table(test_report.headline))
    print("\nMean Dice on the test images, per segmentation:")
    print(format_table(comparison))
    for key, value in extra.items():
        print(f"{key}: {value}")
    print(f"\nwall time {total / 60:.1f} min; steps: " + ", ".join(f"{k} {v:.0f} s" for k, v in step.seconds.items()))
    print(f"report: {test_report.path}")
    results = {"headline": test_report.headline, "comparison": comparison, **extra, "seconds": step.seconds,
               "total_seconds": round(total, 1), "config": settings, "test_images": len(test_report.scored.stats.images)}
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results
