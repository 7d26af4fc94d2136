"""What wins on real clouds: every post-processing step and presence source on and off.

    .venv/bin/python benchmarks/real_clouds.py --work /tmp/rc          # first: runs, stores, classifier
    .venv/bin/python benchmarks/real_clouds_wins.py --work /tmp/rc     # then this, on the same folder

Works on the folder ``real_clouds.py`` left: its first segmentation run (validation and test
probability stores) and its classifier. Post-processing variants are tuned again from the
validation store alone (no model runs) and applied to the test store; presence sources (the
classifier, pixel statistics of the probabilities, a classification head on a segmentation
model trained here once, blends) are tuned on validation Dice after gating; the at-least-one
rule and the threshold placement are tried on and off. Every variant ends as a Kaggle
submission of the 400 test images, scored against ``test_truth.csv``. ``wins.json`` keeps the
table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

if __package__ in (None, ""):  # run as a script: make `cloudpipe` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudpipe.core.competition import CLASSES, SUBMISSION_SHAPE  # noqa: E402
from cloudpipe.core.table import format_table  # noqa: E402
from cloudpipe.data.beside import postprocess_path_for, presence_path, probs_path_for, store_paths

HERE = Path(__file__).resolve().parent
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "real_clouds.yaml")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "cloudpipe-real")
    parser.add_argument("--head-weight", type=float, default=0.1, help="BCE weight of the segmentation head run")
    parser.add_argument("--smoke", action="store_true", help="the smoke settings of real_clouds.py")
    args = parser.parse_args(argv)

    from benchmarks.real_clouds import SMOKE, finished
    from cloudpipe.algorithms.thresholds import PairScores, choose_thresholds
    from cloudpipe.engine.config import load_config
    from cloudpipe.engine.settings import InferenceSettings
    from cloudpipe.engine.train import train_run
    from cloudpipe.pipeline.evaluate import evaluate_files
    from cloudpipe.pipeline.gate import GateInputs
    from cloudpipe.pipeline.predict import predict_submission
    from cloudpipe.pipeline.report import score_submission
    from cloudpipe.pipeline.seg_masks import Tuning, retune_segmentation
    from cloudpipe.pipeline.segment import predict_segmentation
    from cloudpipe.pipeline.tune import ThresholdFiles, tune_thresholds

    settings = yaml.safe_load(args.config.read_text())
    if args.smoke:
        settings.update(SMOKE)
    work, data = args.work, args.work / "data"
    name, overrides = next(iter(settings["seg"].items()))
    run, classifier = work / "runs" / name, work / "runs" / "classifier"
    infer = InferenceSettings(batch_size=16, workers=settings["workers"], progress=False)
    truth = data / "test_truth.csv"
    rows: list[dict] = []
    seconds: dict[str, float] = {}

    def scored(group: str, variant: str, submission: Path, seg_test: Path, **extra) -> None:
        table = evaluate_files(truth, submission, SUBMISSION_SHAPE, SUBMISSION_SHAPE).table
        alone = evaluate_files(truth, seg_test, SUBMISSION_SHAPE, SUBMISSION_SHAPE).table["mean"]
        rows.append({"group": group, "variant": variant, "seg alone": alone, **{c: table[c] for c in CLASSES},
                     "gated": table["mean"], **extra})
        print(f"{group} | {variant}: seg alone {alone:.4f}, gated {table['mean']:.4f}", flush=True)

    def gate(folder: Path, val_csv: Path, test_csv: Path, files: dict | None = None, test_inputs: dict | None = None,
             **tune) -> Path:
        """Tune presence thresholds on ``val_csv`` (``files``: the validation inputs, ``tune``: other
        :class:`GateInputs` fields) and gate ``test_csv`` (``test_inputs``: the test side's files): the submission."""
        folder.mkdir(parents=True, exist_ok=True)
        thresholds = folder / "thresholds.json"
        tune_thresholds(classifier, data, seg=val_csv, files=ThresholdFiles(thresholds, overwrite=True), settings=infer, inputs=GateInputs(files or {}, **tune))
        submission = folder / "submission.csv"
        predict_submission(test_csv, classifier, data, submission, thresholds=thresholds, settings=infer,
                           overwrite=True, inputs=GateInputs(test_inputs or {}))
        return submission

    # 1. Post-processing steps, tuned again from the validation store, applied to the test store's model.
    val_store = store_paths(run / "val_seg.csv")[0]
    folders = {}
    for variant, steps in POSTPROCESS.items():
        folder = folders[variant] = work / "wins" / "postprocess" / steps.replace(",", "+")
        folder.mkdir(parents=True, exist_ok=True)
        val_csv, test_csv = folder / "val_seg.csv", folder / "test_seg.csv"
        started = time.perf_counter()
        tuned = retune_segmentation([val_store], data, val_csv, tuning=Tuning(steps.split(",")), overwrite=True)
        seconds[f"tune {variant}"] = round(time.perf_counter() - started, 1)
        predict_segmentation(run, data, "test", test_csv, postprocess=postprocess_path_for(val_csv), settings=infer,
                             overwrite=True)
        scored("post-processing", variant, gate(folder / "gated", val_csv, test_csv), test_csv,
               choice=tuned.postprocess.describe())
    default = next(folder for variant, folder in folders.items() if "(default)" in variant)
    base_val, base_test = default / "val_seg.csv", default / "test_seg.csv"
    test_store = store_paths(base_test)[0]  # re-tuning writes no store: the validation one is the run's

    # 2. Presence sources (pixel statistics need the stores).
    for variant, sources in SOURCES.items():
        folder = work / "wins" / "sources" / variant.split(" ")[0]
        scored("presence source", variant, gate(folder, base_val, base_test, {"seg_store": val_store}, sources=sources,
                                                test_inputs={"seg_store": test_store}), base_test)

    # 3. A classification head on the segmentation model, trained here once.
    head_run = work / "runs" / f"{name}_head"
    config = load_config("segmentation", overrides={**overrides, "weights": "none", "workers": settings["workers"],
                                                    "head_weight": args.head_weight})
    if not finished(head_run, config.epochs):
        started = time.perf_counter()
        train_run(config, data, head_run, resume=head_run.exists(), progress=False)
        seconds["train-seg with head"] = round(time.perf_counter() - started, 1)
    head_val, head_test = head_run / "val_seg.csv", head_run / "test_seg.csv"
    predict_segmentation(head_run, data, "val", head_val, settings=infer, overwrite=True)
    predict_segmentation(head_run, data, "test", head_test, settings=infer, overwrite=True)
    for variant, sources in {"its masks, classifier": ["classifier"], "its masks, its head": ["head"],
                             "its masks, classifier or head, blends": ["classifier", "head"]}.items():
        folder = work / "wins" / "head" / variant.split(",")[-1].strip().replace(" ", "_")
        scored(f"segmentation with a head (weight {args.head_weight:g})", variant,
               gate(folder, head_val, head_test, {"presence": presence_path(head_val)}, sources=sources,
                    test_inputs={"presence": presence_path(head_test)}), head_test)

    # 4. At least one class per image, and 5. where a threshold is placed between candidates.
    rules = {"threshold placement: exact (default)": {}, "threshold placement: midpoint": {"placement": "midpoint"},
             "at least one class per image": {"try_at_least_one": True}}
    for variant, tune in rules.items():
        folder = work / "wins" / "rules" / variant.split(":")[-1].strip().split(" ")[0]
        submission = gate(folder, base_val, base_test, **tune)
        # How far the thresholds tuned on validation land from the best ones on the test images.
        on_test = score_submission(data, base_test, probs_csv=probs_path_for(submission), thresholds_file=folder / "thresholds.json",
                                   truth_csv=truth, truth_shape=SUBMISSION_SHAPE, progress=False)
        s = on_test.stats
        sweeps = choose_thresholds(on_test.probs, PairScores.of_stats(s))
        gap = float(np.mean([sw.score - sw.score_at(on_test.gate.thresholds[c]) for c, sw in sweeps.items()]))
        scored("gating rules", variant, submission, base_test, gap_to_best_on_test=gap)

    print("\nTest images, Kaggle Dice (mean over pairs), each variant tuned on the validation images:")
    print(format_table([{k: v for k, v in r.items() if k != "choice"} for r in rows]))
    for r in rows:
        if "choice" in r:
            print(f"{r['variant']}: {r['choice']}")
    print("tuning seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    results = {"rows": rows, "seconds": seconds}
    (work / "wins.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
