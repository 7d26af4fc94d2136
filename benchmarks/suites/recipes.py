"""Training recipes on real clouds: each element of the top solutions' recipes against today's,
on the first ``--train-images`` clouds350 training images (20% validate) with the CPU budget of
:data:`SEG` and :data:`CLASSIFIER` (random weights). A segmentation variant is scored on the
test images alone (post-processing tuned on validation) and gated by today's classifier; a
classifier variant by its test accuracy at 0.5 (against the training images' majority label)
and by today's masks gated by it; TTA variants reuse today's run. Runs and scores are kept in
``--work`` (``recipes.json``): call it variant by variant, seed by seed; each call prints the
whole table so far."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd

from benchmarks.common import Bench, prepare_data
from cloudpipe.core.table import format_table
from cloudpipe.data.runfolder import METRICS_CSV

MEASURES = "clouds350: each training-recipe element (optimiser, schedule, EMA, losses, augmentations, TTA) against today's"
WORK = "cloudpipe-recipes"
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


def options(parser) -> None:
    parser.add_argument("--train-images", type=int, default=None, help="[default: 480; 24 with --smoke]")
    parser.add_argument("--test-images", type=int, default=None, help="[default: all]")
    parser.add_argument("--variants", nargs="*", default=None,
                        help="variant names to run [default: all of both stages; with --smoke today and tta x4]")
    parser.add_argument("--stage", choices=["seg", "classifier", "both"], default="both")
    parser.add_argument("--seed", type=int, default=69, help="training seed (the split stays split_seed 69)")


def run(args) -> dict:
    from cloudpipe import InferenceSettings, predict_presence
    from cloudpipe.data.kaggle import find_image, list_test_images, presence, read_mask_csv, read_train

    seg_base, cls_base = (SMOKE_SEG, SMOKE_CLASSIFIER) if args.smoke else (SEG, CLASSIFIER)
    train_images = args.train_images or (24 if args.smoke else 480)
    variants = args.variants if args.variants is not None or not args.smoke else ["today", "tta x4"]
    work = args.work
    infer = InferenceSettings(batch_size=16, workers=0, progress=False)
    bench = Bench(prepare_data(args.data, work / "data", train_images, args.test_images), infer)
    data, truth = bench.data, bench.data / "test_truth.csv"
    results_path = work / "recipes.json"
    results: dict[str, dict] = json.loads(results_path.read_text()) if results_path.exists() else {}

    def wanted(name: str) -> bool:
        return variants is None or name in variants

    def trained(stage: str, name: str, overrides: dict, seed: int):
        """The run of a variant (trained here unless finished) and its training seconds (metrics.csv)."""
        run = bench.train("segmentation" if stage == "seg" else "classifier",
                          {**(seg_base if stage == "seg" else cls_base), **overrides, "workers": 0, "seed": seed},
                          work / "runs" / stage / f"{name.replace(' ', '_').replace('+', 'and')}_s{seed}")
        return run, round(float(pd.read_csv(run / METRICS_CSV)["seconds"].sum()), 1)

    def seg_masks(run, folder, tta: dict, classifier=None):
        """Validation and test masks of a run (post-processing tuned on validation), with TTA, and
        with a classifier gated by it into ``folder/gated``."""
        settings = dataclasses.replace(infer, tta="tta" in tta, tta_views=tta.get("tta", 3), tta_scales=tta.get("tta_scales", (1.0,)))
        return bench.pipeline(folder.name, run, folder, classifier, folder / "gated", seg_settings=settings)

    def gated(folder, classifier, masks) -> float:
        """Test Dice of the test masks gated by ``classifier`` (thresholds tuned on the validation masks)."""
        return bench.dice(bench.pipeline(folder.name, None, folder, classifier, masks=masks).submission)["mean"]

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
            out = seg_masks(run, folder, tta, today_classifier)
            results[key] = {"stage": "seg", "variant": name, "seed": args.seed, "seg alone": bench.dice(out.test)["mean"],
                            "gated": bench.dice(out.submission)["mean"], "train s": seconds}
            results_path.write_text(json.dumps(results, indent=2))
            print(f"{key}: {results[key]}", flush=True)
    if args.stage in ("classifier", "both"):
        today = seg_masks(today_seg, work / "scored" / "seg" / today_seg.name, {})
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
                            "gated": gated(work / "scored" / "classifier" / run.name, run, (today.val, today.test)),
                            "train s": seconds}
            results_path.write_text(json.dumps(results, indent=2))
            print(f"{key}: {results[key]}", flush=True)
    print(f"\nclouds350, {train_images} training images (20% validate), test Dice / accuracy on the test images:")
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
