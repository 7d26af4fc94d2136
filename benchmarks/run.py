"""Every benchmark in one run: one table of cloudpipe against the seed-style baselines.

    .venv/bin/python benchmarks/run.py            # full run (~5-10 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --quick    # smoke run (~1-2 minutes)

Each baseline is measured in the same run as cloudpipe, interleaved with it, and the table
gives the ratio beside its target: speed rows are baseline time / cloudpipe time (higher is
better), the memory row is peak memory on 10x the images / peak on 1x (lower is better). With
a CUDA GPU, cloudpipe's images/s for ``predict`` and for a training epoch are printed too.
See benchmarks/README.md for what each row measures.
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

# Sizes of a run: (full, quick).
SETTINGS = {
    "rle_masks": (200, 30),
    "rle_repeats": (5, 2),
    "data_images": (24, 8),
    "data_repeats": (3, 2),
    "step_batch": (8, 2),
    "steps": (3, 1),
    "predict_images": (32, 8),
    "predict_repeats": (3, 1),
    "memory_images": (20, 16),
}


def _rle_rows(masks: int, repeats: int) -> list[dict]:
    rows = bench_rle.run(masks, repeats)
    for r in rows:
        r.update(unit="ms/mask", scale=1e3,
                 note=f"{masks} masks, best of {repeats}; {r['runs_per_mask']:.0f} runs/mask, {r['coverage']:.0%} cover")
    return rows


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats: a smoke run")
    parser.add_argument("--only", nargs="+", choices=["rle", "data", "step", "predict", "memory", "gpu"],
                        help="run only these parts")
    parser.add_argument("--json", type=Path, help="also write the rows here as JSON")
    args = parser.parse_args(argv)
    s = {k: v[1] if args.quick else v[0] for k, v in SETTINGS.items()}
    parts = set(args.only or ["rle", "data", "step", "predict", "memory", "gpu"])

    started = time.perf_counter()
    load_before = _load()
    print(f"cloudpipe benchmarks ({'quick' if args.quick else 'full'}): {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"load average (1/5/15 min) at start {load_before}", flush=True)
    rows: list[dict] = []
    if "rle" in parts:
        rows += _rle_rows(s["rle_masks"], s["rle_repeats"])
        print(f"  rle done ({time.perf_counter() - started:.0f} s)", flush=True)
    if "data" in parts:
        data_dir = bench_train_data.synthetic_data(train=max(s["data_images"], 24), test=24)
        rows += bench_train_data.pipeline_rows(data_dir, s["data_images"], s["data_repeats"])
        print(f"  training data done ({time.perf_counter() - started:.0f} s)", flush=True)
    if "step" in parts:
        rows.append(bench_train_data.step_row(s["step_batch"], s["steps"]))
        print(f"  training step done ({time.perf_counter() - started:.0f} s)", flush=True)
    if "predict" in parts:
        rows += bench_predict.speed_rows(s["predict_images"], s["predict_repeats"])
        print(f"  predict done ({time.perf_counter() - started:.0f} s)", flush=True)
    if "memory" in parts:
        rows.append(bench_predict.memory_row(s["memory_images"]))
        print(f"  memory done ({time.perf_counter() - started:.0f} s)", flush=True)
    gpu_rows: list[dict] = []
    if "gpu" in parts:
        if torch.cuda.is_available():
            for make in (bench_predict.gpu_row,
                         lambda: bench_train_data.gpu_epoch_row(
                             bench_train_data.synthetic_data(train=bench_train_data.GPU_TRAIN_IMAGES, test=24))):
                made = make()
                if made:
                    gpu_rows.append(made)
        else:
            print("  GPU rows skipped: torch.cuda.is_available() is False", flush=True)

    print()
    print("ratio = baseline / cloudpipe for times (higher is better); for the memory row 10x images / 1x "
          "(lower is better).\nBaselines: the seed's code (benchmarks/seed.py), except memory: cloudpipe itself on 1x images.")
    print(bench_train_data.format_table(rows + gpu_rows, baseline="baseline"))
    missed = [r["benchmark"] for r in rows if bench_train_data.met(r) is False]
    print(f"\n{sum(bench_train_data.met(r) is True for r in rows)} targets met, {len(missed)} missed"
          + (f" ({', '.join(missed)})" if missed else "")
          + f"; {time.perf_counter() - started:.0f} s; load average at start {load_before}, at end {_load()}")
    if args.json:
        args.json.write_text(json.dumps(rows + gpu_rows, indent=1, default=float))


if __name__ == "__main__":
    main()
