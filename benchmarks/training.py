"""The speed suite's training rows: the per-sample data pipeline (``dataset[i]`` in a loop,
``num_workers=0``), one training step and a whole epoch of the ResNet34 classifier on the CPU,
cloudpipe against the seed's (:mod:`benchmarks.seed`) on the same images from the same weights;
benchmarks/README.md, "The rows", says what each side does."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks import seed
from benchmarks.common import FULL, REAL_IMAGES, Sizes, over, row, time_interleaved
from cloudpipe.core.profile import active
from cloudpipe.data.datasets import CloudDataset
from cloudpipe.data.images import reduction_for
from cloudpipe.data.kaggle import TRAIN_CSV, TRAIN_IMAGES, load_train_data
from cloudpipe.data.runfolder import ModelSplit
from cloudpipe.engine.config import load_config
from cloudpipe.engine.devices import resolve_workers
from cloudpipe.engine.dist import Dist
from cloudpipe.engine.recipe import make_optimizer
from cloudpipe.engine.stages import stage_for
from cloudpipe.engine.train import Trainer

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
        rles = data.rles.loc[images[:k], list(active().classes)].to_numpy()
        real_df = pd.DataFrame(
            [(f"{name}_{c}", rles[i, j] or np.nan, c, name) for i, name in enumerate(names[:k]) for j, c in enumerate(active().classes)],
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
    labels = (torch.rand(batch, len(active().classes)) < 0.5).float()
    pixels = torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8)  # NHWC, as batches arrive

    ours = stage.build_model(weights="none").to(memory_format=torch.channels_last).train()
    ours_opt = make_optimizer(ours, stage, config)

    base = seed.build_classifier(seed_state(ours.state_dict()))
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


def seed_state(state: dict) -> dict:
    """A cloudpipe classifier's weights as the seed's plain torchvision ResNet names them (the
    ``body.`` prefix and the normalisation buffers dropped)."""
    return {k[len("body."):]: v for k, v in state.items() if k.startswith("body.")}


def new_trainer(config, data, images: list[str], folder: Path) -> Trainer:
    """cloudpipe's trainer of ``config`` over ``images`` (the first also validates), fresh, in ``folder``."""
    return Trainer(stage_for(config), data, ModelSplit(folder, images, images[:1]), Dist(), state=None)


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
        trainer = new_trainer(config, data, images, Path(tmp))
    base = seed.build_classifier(seed_state(trainer.model.state_dict()))
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

