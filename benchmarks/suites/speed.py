"""Every CPU row in one table: cloudpipe against the seed's code (:mod:`benchmarks.seed`), each
baseline measured in the same run, interleaved; the rows are measured by :mod:`benchmarks.rle`,
:mod:`benchmarks.training` and :mod:`benchmarks.predicting` (see benchmarks/README.md)."""

from __future__ import annotations

import os
import platform
import time

from benchmarks import predicting, rle, training
from benchmarks.common import FULL, SMOKE, format_table, load_average, summary, synthetic_data

MEASURES = "CPU speed and memory against the seed notebook's code: RLE, training data, step, epoch, predict (ratios)"
PARTS = ["rle", "data", "step", "epoch", "predict", "memory"]
# Sizes of a run: (full, quick, smoke).
SETTINGS = {
    "rle_masks": (200, 30, 4),
    "rle_repeats": (5, 2, 1),
    "data_images": (24, 8, 8),
    "data_repeats": (3, 2, 1),
    "step_batch": (8, 2, 2),
    "steps": (3, 1, 1),
    "epoch_images": (24, 16, 8),
    "epochs": (2, 1, 1),
    "predict_images": (32, 8, 2),
    "predict_repeats": (3, 1, 1),
    "memory_images": (20, 16, 2),
}


def options(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    parser.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    parser.add_argument("--compile", action="store_true", help="predict rows for --compile too (~2 min more)")
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=N", help=f"sizes changed: {', '.join(SETTINGS)}")


def run(args) -> list[dict]:
    import torch

    mode = 2 if args.smoke else 1 if args.quick else 0
    s = {k: v[mode] for k, v in SETTINGS.items()}
    for setting in args.set:
        name, _, value = setting.partition("=")
        if name not in SETTINGS or not value.isdigit():
            raise SystemExit(f"--set {setting}: give NAME=N, NAME one of {', '.join(SETTINGS)}")
        s[name] = int(value)
    sizes = SMOKE if args.smoke else FULL
    parts = set(args.only or PARTS)

    started = time.perf_counter()
    load_before = load_average()
    print(f"cloudpipe benchmarks ({['full', 'quick', 'smoke'][mode]}): {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"load average (1/5/15 min) at start {load_before}", flush=True)

    def data_dir():  # the training images of the data and epoch parts (cached: made once)
        return synthetic_data(train=max(s["data_images"], s["epoch_images"], 24), test=24, shape=sizes.image_shape)

    steps = {
        "rle": lambda: rle.rows(s["rle_masks"], s["rle_repeats"]),
        "data": lambda: training.pipeline_rows(data_dir(), s["data_images"], s["data_repeats"], sizes),
        "step": lambda: [training.step_row(s["step_batch"], s["steps"], sizes)],
        "epoch": lambda: [training.epoch_row(data_dir(), s["epoch_images"], s["epochs"], sizes)],
        "predict": lambda: predicting.speed_rows(s["predict_images"], s["predict_repeats"], sizes, args.compile),
        "memory": lambda: [predicting.memory_row(s["memory_images"], sizes)],
    }
    rows: list[dict] = []
    for part in PARTS:
        if part in parts:
            rows += steps[part]()
            print(f"  {part} done ({time.perf_counter() - started:.0f} s)", flush=True)

    print()
    print("ratio = baseline / cloudpipe for times (higher is better); for the memory row 10x images / 1x "
          "(lower is better).\nBaselines: the seed's code (benchmarks/seed.py), except memory: cloudpipe itself on 1x images.")
    print(format_table(rows, baseline="baseline"))
    print(f"\n{summary(rows)}; {time.perf_counter() - started:.0f} s; load average at start {load_before}, "
          f"at end {load_average()}")
    return rows
