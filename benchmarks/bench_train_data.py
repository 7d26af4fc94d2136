"""Training-side speed: cloudpipe's data pipeline, training step and epoch against the seed's.

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
frozen) at 512 x 768 on the CPU: the seed's fp32 NCHW on a normalised float batch and plain Adam
against cloudpipe's bf16 autocast + ``channels_last`` on a uint8 batch and fused Adam (as
``cloudpipe.engine.train`` does).

Training epoch: a whole epoch over ``n`` full-size images at 512 x 768 on the CPU, batch 8 and
one optimiser step per batch on both sides: the seed's dataset, loader (2 workers) and loop
(:func:`benchmarks.seed.train_epoch`) against :meth:`cloudpipe.engine.train.Trainer.train_epoch`
with its defaults (``workers: auto``, which on the CPU decodes inline; the data pipeline above
and the step above).
Both models start from the same random weights. This is the row that says how much faster
training is: on 2 cores, DataLoader workers (the seed's) compete with the model's threads.

Times are the best pass (or step, or epoch) of several, seed and cloudpipe interleaved so that load from
other processes hits both alike.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `cloudpipe` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import seed  # noqa: E402
from benchmarks.common import FULL, REAL_IMAGES, SMOKE, Sizes, format_table, over, row, synthetic_data, time_interleaved  # noqa: E402
from cloudpipe.core.competition import CLASSES  # noqa: E402
from cloudpipe.data.datasets import CloudDataset  # noqa: E402
from cloudpipe.data.images import reduction_for  # noqa: E402
from cloudpipe.data.kaggle import TRAIN_CSV, TRAIN_IMAGES, load_train_data  # noqa: E402
from cloudpipe.data.runfolder import ModelSplit  # noqa: E402
from cloudpipe.engine.config import load_config  # noqa: E402
from cloudpipe.engine.devices import resolve_workers  # noqa: E402
from cloudpipe.engine.dist import Dist  # noqa: E402
from cloudpipe.engine.recipe import make_optimizer  # noqa: E402
from cloudpipe.engine.stages import stage_for  # noqa: E402
from cloudpipe.engine.train import Trainer  # noqa: E402

BATCH_SIZE = 8  # the classifier's default batch
WORKERS = 2  # the seed's DataLoader workers in the epoch row (cloudpipe's are its default, auto)
# Speed-up targets (seed time / cloudpipe time); None: no target set.
TARGETS: dict[str, float | None] = {
    "train data cls": 3.0,
    "train data cls real": 3.0,
    "train data seg": None,
    "train step": None,
    "train epoch": 2.0,
}


# ----------------------------------------------------------------------------- data pipeline


def _pipeline_row(name: str, target: float | None, seed_set, ours_set, n: int, repeats: int, note: str) -> dict:
    # One sample each first: page cache, albumentations' and OpenCV's first-call costs.
    seed_set[0], ours_set[0]
    t = time_interleaved({"seed": over(seed_set.__getitem__, range(n)), "ours": over(ours_set.__getitem__, range(n))},
                         repeats)
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


def pipeline_rows(data_dir: Path, n: int, repeats: int, sizes: Sizes = FULL, real: bool = True,
                  seg: bool = True) -> list[dict]:
    """Per-sample time of the seed's and cloudpipe's training datasets on the same images."""
    size_ = sizes.cls_size
    data = load_train_data(data_dir)
    images = list(data.labels.index[:n])
    df = seed.read_train_csv(data_dir / TRAIN_CSV)
    cls_config = load_config("classifier")
    reduction = reduction_for(data.image_shape, size_)
    rows = []

    seed_cls = seed.CloudDataset(df, images, data_dir / TRAIN_IMAGES, seed.training_transforms(size_),
                                 shape=data.image_shape)
    ours_cls = CloudDataset(data.paths(images), size_, reduction, labels=data.labels.loc[images].to_numpy(),
                            transform=stage_for(cls_config).augmentation(), seed=cls_config.seed)
    _check_samples(seed_cls, ours_cls, "classifier", size_)
    rows.append(_pipeline_row(f"train data cls {size_[0]}x{size_[1]}", TARGETS["train data cls"],
                              seed_cls, ours_cls, n, repeats, "synthetic"))

    if real and REAL_IMAGES.is_dir() and not sizes.smoke:
        names = sorted(p.name for p in REAL_IMAGES.glob("*.jpg"))
        k = min(len(names), len(images))
        # The real masks are not shipped: give each real image the masks of a synthetic one.
        rles = data.rles.loc[images[:k], list(CLASSES)].to_numpy()
        real_df = pd.DataFrame(
            [(f"{name}_{c}", rles[i, j] or np.nan, c, name) for i, name in enumerate(names[:k]) for j, c in enumerate(CLASSES)],
            columns=["Image_Label", "EncodedPixels", "label", "im_id"],
        )
        labels = (rles != "").astype(np.float32)
        seed_real = seed.CloudDataset(real_df, names[:k], REAL_IMAGES, seed.training_transforms(size_))
        ours_real = CloudDataset([REAL_IMAGES / m for m in names[:k]], size_, reduction, labels=labels,
                                 transform=stage_for(cls_config).augmentation(), seed=cls_config.seed)
        _check_samples(seed_real, ours_real, "classifier", size_)
        rows.append(_pipeline_row(f"train data cls {size_[0]}x{size_[1]} real", TARGETS["train data cls real"],
                                  seed_real, ours_real, k, repeats, "real JPEGs"))

    if seg:
        seg_config = load_config("segmentation")
        size = tuple(sizes.seg_size or seg_config.image_size)
        seed_seg = seed.CloudDataset(df, images, data_dir / TRAIN_IMAGES,
                                     seed.training_transforms(size, noise=False, brightness_contrast=False),
                                     task="segmentation", shape=data.image_shape)
        ours_seg = CloudDataset(data.paths(images), size, reduction_for(data.image_shape, size),
                                labels=data.labels.loc[images].to_numpy(),
                                rles=data.rles.loc[images].to_numpy().tolist(), mask_shape=data.image_shape,
                                transform=stage_for(seg_config).augmentation(), seed=seg_config.seed)
        _check_samples(seed_seg, ours_seg, "segmentation", size)
        rows.append(_pipeline_row(f"train data seg {size[0]}x{size[1]}", TARGETS["train data seg"],
                                  seed_seg, ours_seg, n, repeats, "synthetic, masks too"))
    return rows


# ----------------------------------------------------------------------------- training step


def step_row(batch: int, steps: int, sizes: Sizes = FULL) -> dict:
    """One classifier training step on the CPU: seed fp32 NCHW vs cloudpipe bf16 + channels_last."""
    size = sizes.cls_size
    torch.manual_seed(0)
    config = load_config("classifier")
    stage = stage_for(config)
    labels = (torch.rand(batch, len(CLASSES)) < 0.5).float()
    pixels = torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8)  # NHWC, as batches arrive

    ours = stage.build_model(weights="none").to(memory_format=torch.channels_last).train()
    ours_opt = make_optimizer(ours, stage, config)

    base = seed.build_classifier(seed_state(ours))
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


# ----------------------------------------------------------------------------- training epoch


def seed_state(model: torch.nn.Module) -> dict:
    """A cloudpipe classifier's weights as the seed's plain torchvision ResNet names them (the
    ``body.`` prefix and the normalisation buffers dropped)."""
    return {k[len("body."):]: v for k, v in model.state_dict().items() if k.startswith("body.")}


def epoch_row(data_dir: Path, n: int, repeats: int, sizes: Sizes = FULL, batch: int = BATCH_SIZE,
              workers: int = WORKERS) -> dict:
    """A classifier training epoch over ``n`` images on the CPU: the seed's dataset, loader (with
    ``workers``) and loop against cloudpipe's :class:`~cloudpipe.engine.train.Trainer` with its
    default ``workers: auto`` (best of ``repeats`` epochs each, after one warm-up epoch each)."""
    data = load_train_data(data_dir)
    images = list(data.labels.index[:n])
    config = load_config("classifier", overrides=dict(weights="none", image_size=list(sizes.cls_size), batch_size=batch,
                                                      accumulate=1, device="cpu"))
    with tempfile.TemporaryDirectory() as tmp:  # the trainer's folder; nothing is saved here
        trainer = Trainer(stage_for(config), data, ModelSplit(Path(tmp), images, images[:1]), Dist(), state=None)
    base = seed.build_classifier(seed_state(trainer.model))
    base_opt = torch.optim.Adam(filter(lambda p: p.requires_grad, base.parameters()), lr=config.lr)
    criterion = torch.nn.BCEWithLogitsLoss()
    dataset = seed.CloudDataset(seed.read_train_csv(data_dir / TRAIN_CSV), images, data_dir / TRAIN_IMAGES,
                                seed.training_transforms(sizes.cls_size), shape=data.image_shape)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
    epochs = iter(range(repeats + 1))
    t = time_interleaved({"seed": lambda: seed.train_epoch(base, base_opt, criterion, loader),
                          "ours": lambda: trainer.train_epoch(next(epochs), progress=False)}, repeats, warmup=True)
    h, w = sizes.cls_size
    return row(f"train epoch {n} imgs {h}x{w}", t["seed"], t["ours"], TARGETS["train epoch"], unit="s", scale=1.0,
               note=f"batch {batch}, workers {workers} -> {resolve_workers(config.workers, trainer.device)} (auto), "
                    f"best of {repeats}; img/s {n / t['seed']:.2f} -> {n / t['ours']:.2f}")


# ----------------------------------------------------------------------------- entry points


def run(n_images: int = 24, repeats: int = 3, sizes: Sizes = FULL, real: bool = True, seg: bool = True,
        step_batch: int = 2, steps: int = 3, epochs: int = 2) -> list[dict]:
    """Measure the data pipelines (``n_images`` synthetic images, best of ``repeats`` passes),
    when ``steps`` > 0 the training step at batch ``step_batch``, and when ``epochs`` > 0 a
    training epoch over the ``n_images`` (best of ``epochs``).

    Returns:
        Rows with ``benchmark``, ``seed_s`` and ``cloudpipe_s`` (seconds per sample, step or
        epoch), ``ratio`` (seed / cloudpipe), ``target``, ``unit``, ``scale`` and ``note``.
    """
    data_dir = synthetic_data(train=max(n_images, 24), test=24, shape=sizes.image_shape)
    rows = pipeline_rows(data_dir, n_images, repeats, sizes, real=real, seg=seg)
    if steps:
        rows.append(step_row(step_batch, steps, sizes))
    if epochs:
        rows.append(epoch_row(data_dir, n_images, epochs, sizes))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="synthetic 1400x2100 training images")
    parser.add_argument("--repeats", type=int, default=3, help="passes per implementation")
    parser.add_argument("--batch", type=int, default=2, help="training-step batch size")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per side (0: skip)")
    parser.add_argument("--epochs", type=int, default=2, help="timed training epochs per side (0: skip)")
    parser.add_argument("--no-real", action="store_true", help="skip the 6 real images")
    parser.add_argument("--no-seg", action="store_true", help="skip the segmentation pipeline")
    parser.add_argument("--smoke", action="store_true", help="tiny images and sizes, one pass: only check that it runs")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.smoke:
        args.images, args.repeats, args.steps, args.epochs = 8, 1, 1, 1
    rows = run(args.images, args.repeats, sizes, real=not args.no_real, seg=not args.no_seg, step_batch=args.batch,
               steps=args.steps, epochs=args.epochs)
    print("Training data (num_workers=0, per sample), step and epoch (CPU); ratio = seed / cloudpipe")
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
