"""The medallists' recipe end to end on clouds350 on one GPU: ``classifier_competition.yaml`` and
``seg_competition.yaml`` trained (random weights unless ``--weights imagenet``, read from the
local caches: the device machine has no network), predict-seg of validation and test with flip
TTA x4 (post-processing tuned on validation), the gate's thresholds tuned on validation Dice, the
gated test submission scored against ``test_truth.csv``; each step's seconds, and whether the
whole run stayed under 10 minutes."""

from __future__ import annotations

import dataclasses
import time

from benchmarks.common import Bench, prepare_data

MEASURES = "one CUDA GPU: the medallists' recipe (competition configs) end to end on clouds350, test Dice (< 10 min)"
WORK = "cloudpipe-competition"
TARGET_S = 600
SMOKE = {"arch": "tiny", "weights": "none", "image_size": [64, 96], "epochs": 1, "batch_size": 8, "device": "cpu",
         "workers": 0, "ema": 0.0}
"""The stand-ins' overrides of both configs (EMA off: one epoch is too short for it)."""


def options(parser) -> None:
    parser.add_argument("--weights", choices=["none", "imagenet"], default="none")


def run(args) -> dict:
    import torch

    from cloudpipe import InferenceSettings
    from cloudpipe.configs import read_packaged

    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA GPU here: the competition run stays unmeasured (--smoke checks the suite on the CPU)")
        return {}
    started = time.perf_counter()
    device = "cpu" if args.smoke else "auto"
    plain = InferenceSettings(device=device, batch_size=8 if args.smoke else 32, workers=0 if args.smoke else "auto", progress=False)
    bench = Bench(args.work / "data", plain)
    bench.step("prepare data", prepare_data, args.data, bench.data, 1600, None)
    overrides = dict(SMOKE) if args.smoke else {"weights": args.weights}
    runs = {}
    for task, file in (("classifier", "classifier_competition.yaml"), ("segmentation", "seg_competition.yaml")):
        values = {**read_packaged(file), **overrides}
        if args.smoke and task == "segmentation":
            values["encoder"] = "resnet18"  # the tiny stand-in takes any name
        runs[task] = bench.train(task, values, args.work / "runs" / task, reuse=False)
    tta = dataclasses.replace(plain, tta=True, tta_views=4)
    out = bench.pipeline("(TTA x4 masks)", runs["segmentation"], args.work / "out", runs["classifier"], seg_settings=tta)
    results = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "CPU (smoke)",
        "weights": overrides["weights"],
        "test Dice, masks alone": bench.dice(out.test)["mean"],
        "test Dice, gated": bench.dice(out.submission)["mean"],
        "seconds": bench.step.seconds,
        "total s": round(time.perf_counter() - started, 1),
    }
    verdict = "smoke run: the figures mean nothing" if args.smoke else (
        f"{'met' if results['total s'] < TARGET_S else 'MISSED'}: the whole run in {results['total s']:.0f} s "
        f"(target < {TARGET_S} s)")
    print(f"\ntest Dice: masks alone {results['test Dice, masks alone']:.4f}, gated {results['test Dice, gated']:.4f}; {verdict}")
    return results
