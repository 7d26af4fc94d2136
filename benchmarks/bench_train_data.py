"""Training-side speed: cloudpipe's data pipeline and training step against the seed's.

Run as ``python benchmarks/bench_train_data.py`` (prints a table), or call :func:`run` to get the
rows (``benchmark``, ``seed_s``, ``cloudpipe_s``, ``ratio``, ``target``, ...) for a combined table.

Data pipeline (per sample, ``num_workers=0``: ``dataset[i]`` in a loop, the pure per-sample cost).
Both sides read the same 1400 x 2100 JPEGs:

- seed (:class:`benchmarks.seed.CloudDataset`): full-size ``cv2.imread``, all four masks decoded at
  1400 x 2100 with the seed's loop decoder (the seed derived even the classifier's labels from
  the decoded masks), albumentations Resize + flips + brightness/contrast + noise + Normalize +
  ToTensorV2 on float32 CPU arrays.
- cloudpipe (:class:`cloudpipe.data.datasets.CloudDataset`): reduced JPEG decode (libjpeg DCT scaling)
  + resize, labels from the CSV text, the same augmentations on uint8; normalisation happens
  later on the device, inside the model, and is part of the training-step row instead.

Rows: the classifier at 512 x 768 on synthetic images and on the 6 real competition images
(their masks borrowed from the synthetic ``train.csv``, since the real masks are not shipped),
and the segmentation pipeline at 320 x 480 (masks decoded and resized too; flips only, as
``configs/seg.yaml``) against the seed's loader doing the same.

Training step: one forward + backward + Adam step of the ResNet34 classifier (``layer1``/``layer2``
frozen) at 512 x 768 on the CPU: the seed's fp32 NCHW on a normalised float batch against
cloudpipe's bf16 autocast + ``channels_last`` on a uint8 batch (as ``cloudpipe.engine.train`` does).

Times are the best pass (or step) of several, seed and cloudpipe interleaved so that load from
other processes hits both alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `cloudpipe` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import seed  # noqa: E402
from cloudpipe.core.competition import CLASSES, IMAGE_SHAPE  # noqa: E402
from cloudpipe.data.datasets import CloudDataset  # noqa: E402
from cloudpipe.data.images import reduction_for  # noqa: E402
from cloudpipe.data.kaggle import TRAIN_CSV, TRAIN_IMAGES, load_train_data  # noqa: E402
from cloudpipe.engine.config import load_config  # noqa: E402
from cloudpipe.engine.stages import stage_for  # noqa: E402

CACHE = Path(os.environ.get("CLOUDPIPE_BENCH_CACHE", Path(tempfile.gettempdir()) / "cloudpipe-bench"))
REAL_IMAGES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "real" / "train_images"
CLS_SIZE = (512, 768)
GPU_TRAIN_IMAGES = 128  # training images for the GPU epoch (made once, ~30 s, only with a GPU)
# Speed-up targets (seed time / cloudpipe time); None: no target set.
TARGETS: dict[str, float | None] = {
    "train data cls": 3.0,
    "train data cls real": 3.0,
    "train data seg": None,
    "train step": None,
}


# ----------------------------------------------------------------------------- shared helpers


def synthetic_data(train: int, test: int, shape: tuple[int, int] = IMAGE_SHAPE, seed_: int = 0) -> Path:
    """A cached ``cloudpipe.data.synth`` dataset (made once, then reused; ~0.2 s per 1400x2100 image).

    The folder is written under a temporary name and renamed into place, so an interrupted
    run never leaves a half-made cache behind.
    """
    from cloudpipe.data.synth import make_dataset

    out = CACHE / f"synth-{shape[0]}x{shape[1]}-train{train}-test{test}-seed{seed_}"
    if (out / "test_truth.csv").is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".making-"))
    make_dataset(tmp / "data", train=train, test=test, shape=shape, seed=seed_, progress=False)
    try:
        os.replace(tmp / "data", out)
    except OSError:  # made meanwhile by another process
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds of each zero-argument function, calls interleaved."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(t) for name, t in times.items()}


def row(benchmark: str, seed_s: float, ours_s: float, target: float | None, unit: str = "ms", scale: float = 1e3,
        **extra) -> dict:
    """A table row: times in seconds, ``ratio`` = seed / cloudpipe; ``unit``/``scale`` say how
    the times are printed."""
    return {"benchmark": benchmark, "seed_s": seed_s, "cloudpipe_s": ours_s, "ratio": seed_s / ours_s,
            "target": target, "unit": unit, "scale": scale, **extra}


# ----------------------------------------------------------------------------- data pipeline


def _pass(dataset, n: int) -> Callable[[], None]:
    def go() -> None:
        for i in range(n):
            dataset[i]

    return go


def _pipeline_row(name: str, target: float | None, seed_set, ours_set, n: int, repeats: int, note: str) -> dict:
    # One sample each first: page cache, albumentations' and OpenCV's first-call costs.
    seed_set[0], ours_set[0]
    t = time_interleaved({"seed": _pass(seed_set, n), "ours": _pass(ours_set, n)}, repeats)
    seed_s, ours_s = t["seed"] / n, t["ours"] / n
    return row(name, seed_s, ours_s, target, unit="ms/img", note=f"{n} imgs, {note}; img/s {1 / seed_s:.1f} -> {1 / ours_s:.1f}")


def _check_samples(seed_set, ours_set, task: str, size: tuple[int, int]) -> None:
    """Both datasets must give what a training step needs, at the same size."""
    img, target = seed_set[0]
    sample = ours_set[0]
    assert tuple(img.shape) == (3, *size) and img.dtype == torch.float32, img.shape
    assert tuple(sample["image"].shape) == (*size, 3) and sample["image"].dtype == torch.uint8
    want = (4,) if task == "classifier" else (4, *size)
    assert tuple(target.shape) == want and tuple(sample["target"].shape) == want, (target.shape, sample["target"].shape)


def pipeline_rows(data_dir: Path, n: int, repeats: int, real: bool = True, seg: bool = True) -> list[dict]:
    """Per-sample time of the seed's and cloudpipe's training datasets on the same images."""
    data = load_train_data(data_dir)
    images = list(data.labels.index[:n])
    df = seed.read_train_csv(data_dir / TRAIN_CSV)
    cls_config = load_config("classifier")
    reduction = reduction_for(data.image_shape, CLS_SIZE)
    rows = []

    seed_cls = seed.CloudDataset(df, images, data_dir / TRAIN_IMAGES, seed.training_transforms(CLS_SIZE))
    ours_cls = CloudDataset(data.paths(images), CLS_SIZE, reduction, labels=data.labels.loc[images].to_numpy(),
                            transform=stage_for(cls_config).augmentation(), seed=cls_config.seed)
    _check_samples(seed_cls, ours_cls, "classifier", CLS_SIZE)
    rows.append(_pipeline_row(f"train data cls {CLS_SIZE[0]}x{CLS_SIZE[1]}", TARGETS["train data cls"],
                              seed_cls, ours_cls, n, repeats, "synthetic"))

    if real and REAL_IMAGES.is_dir():
        names = sorted(p.name for p in REAL_IMAGES.glob("*.jpg"))
        k = min(len(names), len(images))
        # The real masks are not shipped: give each real image the masks of a synthetic one.
        rles = data.rles.loc[images[:k], list(CLASSES)].to_numpy()
        real_df = pd.DataFrame(
            [(f"{name}_{c}", rles[i, j] or np.nan, c, name) for i, name in enumerate(names[:k]) for j, c in enumerate(CLASSES)],
            columns=["Image_Label", "EncodedPixels", "label", "im_id"],
        )
        labels = (rles != "").astype(np.float32)
        seed_real = seed.CloudDataset(real_df, names[:k], REAL_IMAGES, seed.training_transforms(CLS_SIZE))
        ours_real = CloudDataset([REAL_IMAGES / m for m in names[:k]], CLS_SIZE, reduction, labels=labels,
                                 transform=stage_for(cls_config).augmentation(), seed=cls_config.seed)
        _check_samples(seed_real, ours_real, "classifier", CLS_SIZE)
        rows.append(_pipeline_row(f"train data cls {CLS_SIZE[0]}x{CLS_SIZE[1]} real", TARGETS["train data cls real"],
                                  seed_real, ours_real, k, repeats, "real JPEGs"))

    if seg:
        seg_config = load_config("segmentation")
        size = tuple(seg_config.image_size)
        seed_seg = seed.CloudDataset(df, images, data_dir / TRAIN_IMAGES,
                                     seed.training_transforms(size, noise=False, brightness_contrast=False),
                                     task="segmentation")
        ours_seg = CloudDataset(data.paths(images), size, reduction_for(data.image_shape, size),
                                labels=data.labels.loc[images].to_numpy(),
                                rles=data.rles.loc[images].to_numpy().tolist(), mask_shape=data.image_shape,
                                transform=stage_for(seg_config).augmentation(), seed=seg_config.seed)
        _check_samples(seed_seg, ours_seg, "segmentation", size)
        rows.append(_pipeline_row(f"train data seg {size[0]}x{size[1]}", TARGETS["train data seg"],
                                  seed_seg, ours_seg, n, repeats, "synthetic, masks too"))
    return rows


# ----------------------------------------------------------------------------- training step


def step_row(batch: int, steps: int, size: tuple[int, int] = CLS_SIZE) -> dict:
    """One classifier training step on the CPU: seed fp32 NCHW vs cloudpipe bf16 + channels_last."""
    torch.manual_seed(0)
    config = load_config("classifier")
    stage = stage_for(config)
    labels = (torch.rand(batch, len(CLASSES)) < 0.5).float()
    pixels = torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8)  # NHWC, as batches arrive

    ours = stage.build_model(weights="none").to(memory_format=torch.channels_last).train()
    ours_opt = torch.optim.Adam([p for p in ours.parameters() if p.requires_grad], lr=config.lr)

    base = seed.build_classifier({k[len("body."):]: v for k, v in ours.state_dict().items() if k.startswith("body.")})
    base.train()
    base_opt = torch.optim.Adam(filter(lambda p: p.requires_grad, base.parameters()), lr=config.lr)
    criterion = torch.nn.BCEWithLogitsLoss()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    floats = ((pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std).contiguous()  # seed: Normalize on CPU

    def seed_step() -> None:
        seed.train_step(base, base_opt, criterion, floats, labels)

    def ours_step() -> None:  # as cloudpipe.engine.train.Trainer (accumulate=1; no scaler for bf16)
        images = pixels.permute(0, 3, 1, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = stage.loss(ours(images), labels)
        loss.backward()
        ours_opt.step()
        ours_opt.zero_grad(set_to_none=True)
        loss.item()

    seed_step(), ours_step()  # warm-up: allocator, oneDNN kernel selection
    t = time_interleaved({"seed": seed_step, "ours": ours_step}, steps)
    return row(f"train step b{batch} {size[0]}x{size[1]}", t["seed"], t["ours"], TARGETS["train step"], unit="s/step",
               scale=1.0, note=f"best of {steps}; img/s {batch / t['seed']:.2f} -> {batch / t['ours']:.2f}; "
                               "fp32 NCHW vs bf16 autocast + channels_last")


# ----------------------------------------------------------------------------- GPU (when present)


def gpu_epoch_row(data_dir: Path, epochs: int = 2, device: str = "cuda") -> dict | None:
    """Images/s of a cloudpipe classifier training epoch at 512 x 768 (train + validation images;
    the last of ``epochs`` epochs, so process start-up is not counted); None without CUDA.
    (``device="cpu"`` runs the same code on the CPU, to test it where there is no GPU.)"""
    if device == "cuda" and not torch.cuda.is_available():
        return None
    from cloudpipe.engine.train import train_run

    config = load_config("classifier", overrides=dict(weights="none", epochs=epochs, device=device, accumulate=1,
                                                      workers=min(8, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory() as tmp:
        result = train_run(config, data_dir, Path(tmp) / "run", progress=False)[0]
    n = len(pd.read_csv(data_dir / TRAIN_CSV)) // len(CLASSES)
    seconds = result.history[-1]["seconds"]
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    return {"benchmark": f"GPU train epoch cls {CLS_SIZE[0]}x{CLS_SIZE[1]}", "gpu_images_per_s": n / seconds,
            "note": f"{n} imgs (train + val), epoch {epochs} of {epochs}, batch {config.batch_size}, "
                    f"{config.workers} workers, {name}"}


# ----------------------------------------------------------------------------- entry points


def run(n_images: int = 24, repeats: int = 3, real: bool = True, seg: bool = True, step_batch: int = 2,
        steps: int = 3) -> list[dict]:
    """Measure the data pipelines (``n_images`` synthetic 1400x2100 images, best of ``repeats``
    passes) and, when ``steps`` > 0, the training step at batch ``step_batch``.

    Returns:
        Rows with ``benchmark``, ``seed_s`` and ``cloudpipe_s`` (seconds per sample or per
        step), ``ratio`` (seed / cloudpipe), ``target``, ``unit``, ``scale`` and ``note``.
    """
    data_dir = synthetic_data(train=max(n_images, 24), test=24)
    rows = pipeline_rows(data_dir, n_images, repeats, real=real, seg=seg)
    if steps:
        rows.append(step_row(step_batch, steps))
    return rows


def met(r: dict) -> bool | None:
    """Whether a row meets its target (``target_op`` ``>=``, the default, or ``<=``); None
    without a target."""
    if r.get("target") is None or "ratio" not in r:
        return None
    return r["ratio"] >= r["target"] if r.get("target_op", ">=") == ">=" else r["ratio"] <= r["target"]


def format_table(rows: Sequence[dict], baseline: str = "seed") -> str:
    """Rows (of this module or the others) as a fixed-width text table; ``baseline`` heads the
    baseline column."""
    lines = [f"{'benchmark':<30} {'unit':>7} {baseline:>9} {'cloudpipe':>10} {'ratio':>7} {'target':>7} {'':>7}  note"]
    for r in rows:
        if "ratio" not in r:  # information-only rows (GPU throughput)
            lines.append(f"{r['benchmark']:<30} {'img/s':>7} {'':>9} {r['gpu_images_per_s']:>10.1f} {'':>7} {'':>7} "
                         f"{'':>7}  {r.get('note', '')}")
            continue
        target = "" if r["target"] is None else f"{r.get('target_op', '>=')}{r['target']:g}x"
        ok = met(r)
        verdict = "" if ok is None else ("met" if ok else "MISSED")
        scale = r.get("scale", 1e3)
        lines.append(f"{r['benchmark']:<30} {r.get('unit', 'ms'):>7} {r['seed_s'] * scale:>9.3f} "
                     f"{r['cloudpipe_s'] * scale:>10.3f} {r['ratio']:>6.2f}x {target:>7} {verdict:>7}  {r.get('note', '')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="synthetic 1400x2100 training images")
    parser.add_argument("--repeats", type=int, default=3, help="passes per implementation")
    parser.add_argument("--batch", type=int, default=2, help="training-step batch size")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per side (0: skip)")
    parser.add_argument("--no-real", action="store_true", help="skip the 6 real images")
    parser.add_argument("--no-seg", action="store_true", help="skip the segmentation pipeline")
    args = parser.parse_args(argv)
    rows = run(args.images, args.repeats, real=not args.no_real, seg=not args.no_seg, step_batch=args.batch,
               steps=args.steps)
    gpu = gpu_epoch_row(synthetic_data(train=GPU_TRAIN_IMAGES, test=24)) if torch.cuda.is_available() else None
    print("Training data (num_workers=0, per sample) and training step (CPU); ratio = seed / cloudpipe")
    print(format_table(rows + ([gpu] if gpu else [])))


if __name__ == "__main__":
    main()
