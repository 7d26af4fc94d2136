"""cloudpipe on one GPU: predict over Kaggle's 3,698 test images (24 synthetic 1400 x 2100 JPEGs
repeated under new names, every file decoded every time; ResNet34 at 512 x 768, batch 64) for
each way of decoding, with and without ``torch.compile``, and training images/s at 512 x 768;
benchmarks/README.md, "The GPU", says what each row times. Each variant runs once as a warm-up."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.common import FULL, SMOKE, Sizes, cache_dir, format_table, info_row, load_average, repeat_images, synthetic_data
from benchmarks.predicting import classifier_run, prediction_set
from benchmarks.training import new_trainer
from cloudpipe.core.profile import active
from cloudpipe.data.images import check_images, decode_batch, reduction_for
from cloudpipe.data.kaggle import TEST_IMAGES, TRAIN_CSV, TRAIN_IMAGES, list_test_images, load_train_data, read_mask_csv, to_wide
from cloudpipe.engine.config import load_config
from cloudpipe.engine.devices import resolve_device, resolve_workers
from cloudpipe.engine.infer import image_loader, predict_presence
from cloudpipe.engine.settings import InferenceSettings
from cloudpipe.pipeline.predict import predict_submission

TEST_IMAGES_KAGGLE = 3698
TRAIN_IMAGES_GPU = 1024
SOURCE = 24  # distinct synthetic images; larger sets repeat them under new names
TARGETS = {"inference s": 5.0, "train img/s": 300.0}


def test_paths(data_dir: Path) -> list[Path]:
    """The test images of a prediction set, in ``sample_submission.csv`` order."""
    return [data_dir / TEST_IMAGES / name for name in list_test_images(data_dir)]


def training_set(n: int, sizes: Sizes) -> Path:
    """A cached Kaggle-layout training folder of ``n`` images: the cached synthetic ones
    repeated under new names (symlinks), their ``train.csv`` rows copied."""
    out = cache_dir() / f"train-{n}-{sizes.image_shape[0]}x{sizes.image_shape[1]}"
    if (out / TRAIN_CSV).is_file():
        return out
    source = synthetic_data(train=SOURCE, test=SOURCE, shape=sizes.image_shape)
    masks = to_wide(read_mask_csv(source / TRAIN_CSV))
    originals = list(masks.index)
    names = repeat_images(source / TRAIN_IMAGES, originals, n, out / TRAIN_IMAGES,
                          lambda original, i: f"{original[:-4]}r{i:05d}.jpg")
    rows = [(f"{name}_{c}", masks.loc[originals[i % len(originals)], c]) for i, name in enumerate(names) for c in active().classes]
    tmp = out / (TRAIN_CSV + ".tmp")
    pd.DataFrame(rows, columns=["Image_Label", "EncodedPixels"]).to_csv(tmp, index=False)
    os.replace(tmp, out / TRAIN_CSV)
    return out


def _timed(fn) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def decode_row(paths: list[Path], sizes: Sizes, settings: InferenceSettings, device: torch.device) -> dict:
    """Images/s of decoding alone (the loader and, for ``device``, the batched decode), no model."""
    shape = check_images(paths[:1])
    size, reduction = sizes.cls_size, reduction_for(shape, sizes.cls_size)

    def go() -> None:
        for batch in image_loader(paths, size, shape, settings, device):
            if settings.decode == "device":
                decode_batch(batch["data"], [paths[i] for i in batch["index"]], size, reduction, device)
            else:
                batch["image"].to(device, non_blocking=True)

    go()  # warm-up: page cache, nvJPEG's handles
    seconds, _ = _timed(go)
    workers = resolve_workers(settings.workers, device)
    return info_row(f"decode only, {settings.decode}", len(paths) / seconds, "img/s",
                    note=f"{len(paths)} imgs to {size[0]}x{size[1]} on {device.type}, {workers} workers, batch {settings.batch_size}")


def predict_rows(n: int, sizes: Sizes, device: torch.device, batch: int, compile_: bool, check: int = 64) -> list[dict]:
    """Decode-only rows, then per variant (decode way x compile) the inference and whole-call
    times and the largest probability difference from the CPU path on the first ``check`` images."""
    run_dir = classifier_run(sizes)
    data_dir = prediction_set(n, sizes)
    paths = test_paths(data_dir)
    out = cache_dir() / "out" / "gpu-predict.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    base = InferenceSettings(device=device.type, batch_size=batch, workers="auto", progress=False)
    check = min(check, n)
    reference = predict_presence(run_dir, paths[:check], dataclasses.replace(base, device="cpu", workers=2))
    rows = [decode_row(paths, sizes, dataclasses.replace(base, decode=d), device) for d in ("workers", "device")]
    print(format_table(rows, baseline=""), flush=True)
    for decode in ("workers", "device"):
        for compiled in (False, True) if compile_ else (False,):
            settings = dataclasses.replace(base, decode=decode, compile=compiled)
            label = f"{decode} decode{', compiled' if compiled else ''}"
            probs = predict_presence(run_dir, paths[:check], settings)  # warm-up, and the check
            differs = float(np.abs(probs - reference).max())
            whole = lambda settings=settings: predict_submission(  # noqa: E731
                data_dir / "seg.csv", run_dir, data_dir, out, thresholds=0.5, settings=settings, overwrite=True)
            whole()  # warm-up of the whole call
            infer_s, _ = _timed(lambda settings=settings: predict_presence(run_dir, paths, settings))
            whole_s, _ = _timed(whole)
            new = [info_row(f"predict inference, {label}", infer_s, "s", target=TARGETS["inference s"], max_diff=differs,
                            note=f"{n} imgs, {n / infer_s:.0f} img/s; max |p - p_cpu| {differs:.4f} on {check} imgs"),
                   info_row(f"predict whole, {label}", whole_s, "s",
                            note=f"{n} imgs incl. checks, model load, blanking, writes; {n / whole_s:.0f} img/s")]
            print(format_table(new).split("\n", 1)[1], flush=True)
            rows += new
    return rows


def train_rows(n: int, sizes: Sizes, device: torch.device, compile_: bool) -> list[dict]:
    """Images/s of a training epoch (the second) for the recipe, batch 32 x 1 and compiled."""
    data_dir = training_set(n, sizes)
    data = load_train_data(data_dir)
    images = list(data.labels.index)
    variants = {"recipe 8x4": dict(batch_size=8, accumulate=4), "batch 32x1": dict(batch_size=32, accumulate=1)}
    if compile_:
        variants["recipe 8x4, compiled"] = dict(batch_size=8, accumulate=4, compile=True)
    rows = []
    for label, overrides in variants.items():
        config = load_config("classifier", overrides=dict(weights="none", image_size=list(sizes.cls_size), workers="auto",
                                                          device=device.type, epochs=2, **overrides))
        with tempfile.TemporaryDirectory() as tmp:
            trainer = new_trainer(config, data, images, Path(tmp))
            trainer.train_epoch(0, progress=False)  # warm-up: workers, cuDNN's autotuner, compilation
            seconds, _ = _timed(lambda trainer=trainer: trainer.train_epoch(1, progress=False))
        workers = resolve_workers(config.workers, device)
        new = info_row(f"train epoch, {label}", n / seconds, "img/s", target=TARGETS["train img/s"],
                       note=f"{n} imgs at {sizes.cls_size[0]}x{sizes.cls_size[1]}, {workers} workers, {seconds:.1f} s")
        print(format_table([new]).split("\n", 1)[1], flush=True)
        rows.append(new)
    return rows


def verdicts(rows: list[dict]) -> str:
    """Which rows with a target meet it (inference: seconds <= target; training: img/s >= target)."""
    met = [r["value"] <= r["target"] if r["unit"] == "s" else r["value"] >= r["target"] for r in rows if "target" in r]
    return f"{sum(met)} of {len(met)} rows meet their target (inference <= {TARGETS['inference s']:g} s, " \
           f"training >= {TARGETS['train img/s']:g} img/s)"


MEASURES = "one CUDA GPU: predict over 3,698 full-size images (< 5 s), training img/s at 512 x 768 (>= 300)"


def options(parser) -> None:
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--images", type=int, default=TEST_IMAGES_KAGGLE, help="test images to predict")
    parser.add_argument("--train-images", type=int, default=TRAIN_IMAGES_GPU, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=64, help="predict's batch size")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")


def run(args) -> list[dict]:
    sizes = SMOKE if args.smoke else FULL
    if args.smoke:
        args.images, args.train_images, args.batch_size, args.no_compile = 20, 16, 8, True
    device = resolve_device(args.device)
    if device.type != "cuda" and not args.smoke:
        print("no CUDA GPU here: the GPU figures stay unmeasured (--smoke checks the script on the CPU; "
              "--device cpu runs it in full on the CPU)")
        if args.device != "cpu":
            return []
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"cloudpipe GPU benchmark on {name}, torch {torch.__version__}, {os.cpu_count()} CPUs "
          f"({resolve_workers('auto', device)} workers auto); load average {load_average()}", flush=True)
    started = time.perf_counter()
    rows = predict_rows(args.images, sizes, device, args.batch_size, not args.no_compile)
    rows += train_rows(args.train_images, sizes, device, not args.no_compile)
    print()
    print(format_table(rows, baseline=""))
    verdict = "smoke run: the figures mean nothing" if args.smoke else verdicts(rows)
    print(f"\n{verdict}; {time.perf_counter() - started:.0f} s")
    return rows
