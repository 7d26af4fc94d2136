"""Training recipes on real clouds: each element of the top solutions' recipes against today's.

    flock /tmp/cloudpipe-bench.lock .venv/bin/python benchmarks/real_clouds_recipes.py --work /tmp/rr
    ... --variants today cosine --seed 7    # some variants only, with another seed (results add up)
    ... --smoke                             # tiny stand-in models on a few images: checks the script runs

On ``../shared/data/clouds350`` (the first ``--train-images`` training images, 20% of them
validate, and the test images), with the CPU budget of :data:`SEG` and :data:`CLASSIFIER`
(random weights): every segmentation variant of :data:`SEG_VARIANTS` trains one run, predicts
its validation masks (post-processing tuned there, the default steps) and its test masks,
and is scored on the test images alone and gated by today's classifier (thresholds tuned on
validation Dice). The TTA variants reuse today's run. Every classifier variant of
:data:`CLASSIFIER_VARIANTS` is scored by its test accuracy (at 0.5, per class, against the
majority label of the training images) and by the test Dice of today's segmentation gated by
it. Finished runs and scores are kept in ``--work`` (``recipes.json``), so the script can be
called variant by variant, seed by seed; each call prints the whole table so far.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):  # run as a script: make `cloudpipe` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudpipe.core.competition import SUBMISSION_SHAPE  # noqa: E402
from cloudpipe.core.table import format_table  # noqa: E402
from cloudpipe.data.runfolder import METRICS_CSV  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "clouds350"
SEG = {"arch": "Unet", "encoder": "resnet18", "image_size": [96, 160], "epochs": 5, "batch_size": 16, "lr": 0.001,
       "val_fraction": 0.2, "head_weight": 0.0}
CLASSIFIER = {"arch": "resnet18", "image_size": [128, 192], "epochs": 5, "batch_size": 16, "accumulate": 1,
              "freeze": [], "val_fraction": 0.2}
SEG_VARIANTS: dict[str, dict] = {  # name -> overrides of SEG; "tta" / "tta_scales" entries reuse today's run
    "today": {},
    "adamw + encoder lr x0.1": {"optimizer": "adamw", "encoder_lr_ratio": 0.1, "weight_decay": 0.01},
    "cosine + warmup 1": {"schedule": "cosine", "warmup_epochs": 1},
    "ema 0.95": {"ema": 0.95},  # ~20-step horizon: about one epoch of this budget (timm's 0.9998 is for 100k steps)
    "bce 0.75 + dice 0.25": {"loss": {"bce": 0.75, "dice": 0.25}},
    "present-only dice": {"mask_loss_on": "present"},
    "bce + lovasz": {"loss": {"bce": 1.0, "lovasz": 1.0}},
    "augment light": {"augment": "light"},  # issue 30: the medallists' augmentations (cloudpipe.data.transforms.PRESETS)
    "augment medium": {"augment": "medium"},
    "augment heavy": {"augment": "heavy"},
    "positive-only loss": {"mask_loss_on": "positive"},  # every term (BCE too) on the non-empty masks only
    "cutmix 0.5": {"cutmix": 0.5},
    "tta x3": {"tta": 3},
    "tta x4": {"tta": 4},
    "tta scales 0.75,1,1.25": {"tta_scales": (0.75, 1.0, 1.25)},  # the 5th place's multi-scale TTA
}
CLASSIFIER_VARIANTS: dict[str, dict] = {
    "today": {},
    "adamw + backbone lr x0.1": {"optimizer": "adamw", "encoder_lr_ratio": 0.1, "weight_decay": 0.01},
    "cosine + warmup 1": {"schedule": "cosine", "warmup_epochs": 1},
    "ema 0.95": {"ema": 0.95},
    "best by auc": {"best_by": "auc"},  # issue 30: best.pt by the mean per-class ROC AUC instead of accuracy at 0.5
}
SMOKE_SEG = {"arch": "tiny", "image_size": [64, 96], "epochs": 2, "batch_size": 8}
SMOKE_CLASSIFIER = {"arch": "tiny", "image_size": [64, 96], "epochs": 2, "batch_size": 8, "accumulate": 1, "freeze": []}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "cloudpipe-recipes")
    parser.add_argument("--data", type=Path, default=DATA, help="clouds350 folder")
    parser.add_argument("--train-images", type=int, default=480)
    parser.add_argument("--test-images", type=int, default=None, help="[default: all]")
    parser.add_argument("--variants", nargs="*", default=None, help="variant names to run [default: all of both stages]")
    parser.add_argument("--stage", choices=["seg", "classifier", "both"], default="both")
    parser.add_argument("--seed", type=int, default=69, help="training seed (the split stays split_seed 69)")
    parser.add_argument("--smoke", action="store_true", help="tiny stand-in models on a few images: checks the script runs")
    args = parser.parse_args(argv)

    from benchmarks.real_clouds import finished, prepare_data
    from cloudpipe.data.kaggle import find_image, list_test_images, presence, read_mask_csv, read_train
    from cloudpipe.engine.config import load_config
    from cloudpipe.engine.infer import predict_presence
    from cloudpipe.engine.settings import InferenceSettings
    from cloudpipe.engine.train import train_run
    from cloudpipe.pipeline.evaluate import evaluate_files
    from cloudpipe.pipeline.predict import predict_submission
    from cloudpipe.pipeline.segment import predict_segmentation
    from cloudpipe.pipeline.tune import ThresholdFiles, tune_thresholds

    seg_base, cls_base = (SMOKE_SEG, SMOKE_CLASSIFIER) if args.smoke else (SEG, CLASSIFIER)
    work = args.work
    data = prepare_data(args.data, work, args.train_images, args.test_images)
    truth = data / "test_truth.csv"
    infer = InferenceSettings(batch_size=16, workers=0, progress=False)
    results_path = work / "recipes.json"
    results: dict[str, dict] = json.loads(results_path.read_text()) if results_path.exists() else {}

    def wanted(name: str) -> bool:
        return args.variants is None or name in args.variants

    def trained(stage: str, name: str, overrides: dict, seed: int) -> tuple[Path, float]:
        """The run of a variant (trained here unless finished) and its training seconds (metrics.csv)."""
        task = "segmentation" if stage == "seg" else "classifier"
        base = seg_base if stage == "seg" else cls_base
        config = load_config(task, overrides={**base, **overrides, "weights": "none", "workers": 0, "seed": seed})
        run = work / "runs" / stage / f"{name.replace(' ', '_').replace('+', 'and')}_s{seed}"
        if not finished(run, config.epochs):
            train_run(config, data, run, resume=run.exists(), progress=False)
        return run, round(float(pd.read_csv(run / METRICS_CSV)["seconds"].sum()), 1)

    def gated(folder: Path, classifier: Path, val_csv: Path, test_csv: Path) -> float:
        """Test Dice of ``test_csv`` gated by ``classifier`` (thresholds tuned on ``val_csv``)."""
        folder.mkdir(parents=True, exist_ok=True)
        thresholds, submission = folder / "thresholds.json", folder / "submission.csv"
        tune_thresholds(classifier, data, seg=val_csv, files=ThresholdFiles(thresholds, overwrite=True), settings=infer)
        predict_submission(test_csv, classifier, data, submission, thresholds=thresholds, settings=infer,
                           overwrite=True)
        return evaluate_files(truth, submission, SUBMISSION_SHAPE, SUBMISSION_SHAPE).table["mean"]

    def seg_masks(run: Path, folder: Path, tta: dict) -> tuple[Path, Path]:
        """Validation and test masks of a run (post-processing tuned on validation), with TTA."""
        settings = InferenceSettings(**{**infer.__dict__, "tta": "tta" in tta, "tta_views": tta.get("tta", 3),
                                        "tta_scales": tta.get("tta_scales", (1.0,))})
        folder.mkdir(parents=True, exist_ok=True)
        val_csv, test_csv = folder / "val_seg.csv", folder / "test_seg.csv"
        predict_segmentation(run, data, "val", val_csv, settings=settings, overwrite=True)
        predict_segmentation(run, data, "test", test_csv, settings=settings, overwrite=True)
        return val_csv, test_csv

    today_classifier, _ = trained("classifier", "today", {}, 69)
    today_seg, _ = trained("seg", "today", {}, 69)
    if args.stage in ("seg", "both"):
        for name, overrides in SEG_VARIANTS.items():
            key = f"seg | {name} | seed {args.seed}"
            if not wanted(name) or key in results:
                continue
            tta = {k: v for k, v in overrides.items() if k in ("tta", "tta_scales")}
            run, seconds = trained("seg", "today" if tta else name, {} if tta else overrides, args.seed)
            views = f"_tta{tta['tta']}" if "tta" in tta else ""
            views += f"_scales{'-'.join(f'{v:g}' for v in tta['tta_scales'])}" if "tta_scales" in tta else ""
            folder = work / "scored" / "seg" / f"{run.name}{views}"
            val_csv, test_csv = seg_masks(run, folder, tta)
            alone = evaluate_files(truth, test_csv, SUBMISSION_SHAPE, SUBMISSION_SHAPE).table["mean"]
            results[key] = {"stage": "seg", "variant": name, "seed": args.seed, "seg alone": alone,
                            "gated": gated(folder / "gated", today_classifier, val_csv, test_csv), "train s": seconds}
            results_path.write_text(json.dumps(results, indent=2))
            print(f"{key}: {results[key]}", flush=True)
    if args.stage in ("classifier", "both"):
        today_val, today_test = seg_masks(today_seg, work / "scored" / "seg" / today_seg.name, {})
        test_images = list_test_images(data)
        paths = [find_image(data, image) for image in test_images]
        labels = presence(read_mask_csv(truth)).loc[test_images].to_numpy().astype(bool)
        majority = presence(read_train(data)).to_numpy().mean(axis=0) >= 0.5
        majority_accuracy = float((labels == majority).mean())
        for name, overrides in CLASSIFIER_VARIANTS.items():
            key = f"classifier | {name} | seed {args.seed}"
            if not wanted(name) or key in results:
                continue
            run, seconds = trained("classifier", name, overrides, args.seed)
            probs = predict_presence(run, paths, infer)
            results[key] = {"stage": "classifier", "variant": name, "seed": args.seed,
                            "test accuracy": float(((probs >= 0.5) == labels).mean()), "majority": majority_accuracy,
                            "gated": gated(work / "scored" / "classifier" / run.name, run, today_val, today_test),
                            "train s": seconds}
            results_path.write_text(json.dumps(results, indent=2))
            print(f"{key}: {results[key]}", flush=True)
    print(f"\nclouds350, {args.train_images} training images (20% validate), test Dice / accuracy on the test images:")
    print(format_table(summary(results)))
    return results


def summary(results: dict[str, dict]) -> list[dict]:
    """One row per (stage, variant): the mean over its seeds, the spread (max - min), and the
    difference to today's recipe on the same seeds."""
    rows = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results.values():
        groups.setdefault((r["stage"], r["variant"]), []).append(r)
    for (stage, variant), runs in groups.items():
        metric = "seg alone" if stage == "seg" else "test accuracy"
        today = {r["seed"]: r for r in groups.get((stage, "today"), [])}
        paired = [r for r in runs if r["seed"] in today]
        row = {"stage": stage, "variant": variant, "seeds": ",".join(str(r["seed"]) for r in runs)}
        for column in (metric, "gated"):
            values = np.array([r[column] for r in runs])
            row[column] = float(values.mean())
            row[f"{column} spread"] = float(values.max() - values.min())
            row[f"{column} vs today"] = float(np.mean([r[column] - today[r["seed"]][column] for r in paired])) \
                if paired else float("nan")
        if stage == "classifier":
            row["majority"] = runs[0]["majority"]
        rows.append(row)
    return [{k: r.get(k, "") for k in _columns(rows)} for r in rows]


def _columns(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    return columns

if __name__ == "__main__":
    main()
