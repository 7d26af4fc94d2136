"""What wins on real clouds: every post-processing step and presence source on and off, on the
clouds suite's first segmentation run (its validation and test stores) and its classifier.
Post-processing variants are tuned again from the validation store alone (no model runs) and
applied to the test store; presence sources (the classifier, pixel statistics of the
probabilities, a classification head on a segmentation model trained here once, blends) are
tuned on validation Dice after gating; the at-least-one rule and the threshold placement are
tried on and off. Every variant ends as a submission of the test images scored against
``test_truth.csv``; ``wins.json`` keeps the table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.common import Bench
from benchmarks.suites import clouds
from cloudpipe.core.profile import active
from cloudpipe.core.table import format_table

MEASURES = "clouds350: each post-processing step, presence source and gating rule on and off (needs clouds)"
NEEDS = ("clouds",)
WORK = clouds.WORK
POSTPROCESS = {  # name -> steps, tuned per class on validation Dice
    "threshold only": "threshold",
    "threshold + min size": "threshold,min_size",
    "threshold + min size + component shape (default)": "threshold,min_size,shape",
    "threshold + triplet (top_area) + min size": "threshold,top_area,min_size",
}
SOURCES = {  # name -> presence sources tune-threshold may choose from, per class
    "classifier (default)": ["classifier"],
    "max pixel": ["max"],
    "top-K mean": ["top_mean"],
    "area above 0.5": ["area"],
    "classifier or pixel stats, blends": ["classifier", "max", "top_mean", "area"],
}


def options(parser) -> None:
    clouds.options(parser)
    parser.add_argument("--head-weight", type=float, default=0.1, help="BCE weight of the segmentation head run")


def run(args) -> dict:
    from cloudpipe import InferenceSettings, predict_segmentation
    from cloudpipe.algorithms.thresholds import PairScores, choose_thresholds
    from cloudpipe.data.beside import postprocess_path_for, presence_path, probs_path_for, store_paths
    from cloudpipe.pipeline.report import score_submission
    from cloudpipe.pipeline.seg_masks import Tuning, retune_segmentation

    work = args.work
    if (work / "results.json").is_file():
        print(f"wins: on the clouds suite's runs, stores and classifier in {work}", flush=True)
    else:
        print(f"wins needs the clouds suite's runs, stores and classifier: running it in {work} first", flush=True)
        clouds.run(args)
    settings = clouds.settings_of(args)
    bench = Bench(work / "data", InferenceSettings(batch_size=16, workers=settings["workers"], progress=False))
    step, data = bench.step, bench.data
    name, overrides = next(iter(settings["seg"].items()))
    run_dir, classifier = work / "runs" / name, work / "runs" / "classifier"
    rows: list[dict] = []

    def scored(group: str, variant: str, masks: tuple[Path, Path], folder: Path, **gate) -> Path:
        """Gate ``masks`` (thresholds tuned on the validation ones, :meth:`Bench.pipeline`'s
        ``gate`` options) into ``folder`` and score the submission beside the masks alone."""
        submission = bench.pipeline(f"{group} | {variant}", None, folder, classifier, masks=masks, **gate).submission
        table, alone = bench.dice(submission), bench.dice(masks[1])["mean"]
        rows.append({"group": group, "variant": variant, "seg alone": alone, **{c: table[c] for c in active().classes}, "gated": table["mean"]})
        print(f"{group} | {variant}: seg alone {alone:.4f}, gated {table['mean']:.4f}", flush=True)
        return submission

    # 1. Post-processing steps, tuned again from the validation store, applied to the test store's model.
    val_store, folders, choices = store_paths(run_dir / "val_seg.csv")[0], {}, {}
    for variant, steps in POSTPROCESS.items():
        folder = folders[variant] = work / "wins" / "postprocess" / steps.replace(",", "+")
        folder.mkdir(parents=True, exist_ok=True)
        val_csv, test_csv = folder / "val_seg.csv", folder / "test_seg.csv"
        tuned = step(f"tune {variant}", retune_segmentation, [val_store], data, val_csv, tuning=Tuning(steps.split(",")),
                     overwrite=True)
        step(f"predict-seg test {variant}", predict_segmentation, run_dir, data, "test", test_csv,
             postprocess=postprocess_path_for(val_csv), settings=bench.infer, overwrite=True)
        scored("post-processing", variant, (val_csv, test_csv), folder / "gated")
        choices[variant] = tuned.postprocess.describe()
    default = next(folder for variant, folder in folders.items() if "(default)" in variant)
    base = default / "val_seg.csv", default / "test_seg.csv"
    test_store = store_paths(base[1])[0]  # re-tuning writes no store: the validation one is the run's

    # 2. Presence sources (pixel statistics need the stores).
    for variant, sources in SOURCES.items():
        scored("presence source", variant, base, work / "wins" / "sources" / variant.split(" ")[0], inputs={"seg_store": val_store},
               test_inputs={"seg_store": test_store}, tune={"sources": sources})

    # 3. A classification head on the segmentation model, trained here once.
    head_run = bench.train("segmentation", {**overrides, "workers": settings["workers"], "head_weight": args.head_weight},
                           work / "runs" / f"{name}_head")
    head = bench.pipeline("head", head_run, head_run)
    for variant, sources in {"its masks, classifier": ["classifier"], "its masks, its head": ["head"],
                             "its masks, classifier or head, blends": ["classifier", "head"]}.items():
        scored(f"segmentation with a head (weight {args.head_weight:g})", variant, (head.val, head.test),
               work / "wins" / "head" / variant.split(",")[-1].strip().replace(" ", "_"), inputs={"presence": presence_path(head.val)},
               tune={"sources": sources}, test_inputs={"presence": presence_path(head.test)})

    # 4. At least one class per image, and 5. where a threshold is placed between candidates.
    rules = {"threshold placement: exact (default)": {}, "threshold placement: midpoint": {"placement": "midpoint"},
             "at least one class per image": {"try_at_least_one": True}}
    for variant, tune in rules.items():
        folder = work / "wins" / "rules" / variant.split(":")[-1].strip().split(" ")[0]
        submission = scored("gating rules", variant, base, folder, tune=tune)
        # How far the thresholds tuned on validation land from the best ones on the test images.
        on_test = score_submission(data, base[1], probs_csv=probs_path_for(submission), thresholds_file=folder / "thresholds.json",
                                   truth_csv=data / "test_truth.csv", truth_shape=active().submission_size, progress=False)
        sweeps = choose_thresholds(on_test.probs, PairScores.of_stats(on_test.stats))
        rows[-1]["gap_to_best_on_test"] = float(np.mean([sw.score - sw.score_at(on_test.gate.thresholds[c]) for c, sw in sweeps.items()]))

    print("\nTest images, Kaggle Dice (mean over pairs), each variant tuned on the validation images:")
    print(format_table(rows))
    for variant, choice in choices.items():
        print(f"{variant}: {choice}")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in step.seconds.items()))
    results = {"rows": rows, "choices": choices, "seconds": step.seconds}
    (work / "wins.json").write_text(json.dumps(results, indent=2))
    return results
