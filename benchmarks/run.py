"""Every CPU benchmark in one run: one table of cloudpipe against the seed-style baselines.

    .venv/bin/python benchmarks/run.py            # full run (~6-10 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --quick    # fewer images and repeats (~2-3 minutes)
    .venv/bin/python benchmarks/run.py --smoke    # tiny sizes: only checks that it runs (CI)

Each baseline is measured in the same run as cloudpipe, interleaved with it, and the table
gives the ratio beside its target: speed rows are baseline time / cloudpipe time (higher is
better), the memory row is peak memory on 10x the images / peak on 1x (lower is better). The
GPU has its own script, ``benchmarks/gpu.py``. See benchmarks/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `cloudpipe` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import bench_predict, bench_rle, bench_train_data  # noqa: E402
from benchmarks.common import FULL, SMOKE, format_table, load_average, summary, synthetic_data  # noqa: E402

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


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and counts: only check that it runs")
    parser.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    parser.add_argument("--compile", action="store_true", help="predict rows for --compile too (~2 min more)")
    parser.add_argument("--json", type=Path, help="also write the rows here as JSON")
    args = parser.parse_args(argv)
    mode = 2 if args.smoke else 1 if args.quick else 0
    s = {k: v[mode] for k, v in SETTINGS.items()}
    sizes = SMOKE if args.smoke else FULL
    parts = set(args.only or PARTS)

    started = time.perf_counter()
    load_before = load_average()
    print(f"cloudpipe benchmarks ({['full', 'quick', 'smoke'][mode]}): {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"load average (1/5/15 min) at start {load_before}", flush=True)
    def data_dir() -> Path:  # the training images of the data and epoch parts (cached: made once)
        return synthetic_data(train=max(s["data_images"], s["epoch_images"], 24), test=24, shape=sizes.image_shape)

    steps = {
        "rle": lambda: bench_rle.run(s["rle_masks"], s["rle_repeats"]),
        "data": lambda: bench_train_data.pipeline_rows(data_dir(), s["data_images"], s["data_repeats"], sizes),
        "step": lambda: [bench_train_data.step_row(s["step_batch"], s["steps"], sizes)],
        "epoch": lambda: [bench_train_data.epoch_row(data_dir(), s["epoch_images"], s["epochs"], sizes)],
        "predict": lambda: bench_predict.speed_rows(s["predict_images"], s["predict_repeats"], sizes, args.compile),
        "memory": lambda: [bench_predict.memory_row(s["memory_images"], sizes)],
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
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))
    return rows


if __name__ == "__main__":
    main()
