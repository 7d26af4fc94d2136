"""Batched, streaming inference of a run's model(s) on CPU or GPU.

Images are decoded reduced in DataLoader workers and cross to the device as uint8 (pinned,
asynchronously), or, with ``decode="device"``, cross as JPEG bytes and are decoded there in
batches (nvJPEG on a GPU). They run in ``channels_last`` under autocast
(:func:`~cloudpipe.engine.devices.autocast`), optionally compiled and with flip TTA, and leave
as probabilities batch by batch: memory stays flat however many images there are. A run with fold models
(``fold*/best.pt``) averages all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.profile import active
from cloudpipe.data.datasets import CloudDataset, JpegFiles, collate_files, worker_init
from cloudpipe.data.images import check_images, decode_batch, reduction_for
from cloudpipe.data.runfolder import trained_checkpoints
from cloudpipe.engine.checkpoint import load_checkpoint
from cloudpipe.engine.config import TrainConfig, checkpoint_config
from cloudpipe.engine.devices import autocast, compile_model, resolve_device, resolve_workers
from cloudpipe.engine.dist import Dist
from cloudpipe.engine.settings import InferenceSettings
from cloudpipe.engine.stages import stage_for

TTA_VIEWS: dict[int, tuple[tuple[int, ...] | None, ...]] = {
    3: (None, (3,), (2,)),          # identity, horizontal flip, vertical flip
    4: (None, (3,), (2,), (2, 3)),  # ... and both flips (a 180-degree rotation)
}
"""The flipped views of ``settings.tta_views``, as the NCHW dimensions each flips."""


def scaled(images: torch.Tensor, scale: float) -> torch.Tensor:
    """A batch (N, 3, H, W) resized by ``scale`` (bilinear, as float), each side rounded to a
    multiple of 32 (at least 32), the size the encoders need; itself for 1."""
    if scale == 1:
        return images
    h, w = images.shape[-2:]
    size = tuple(max(32, round(side * scale / 32) * 32) for side in (h, w))
    out = nn.functional.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


@dataclass
class RunModels:
    """The trained model(s) of a run folder, ready for inference."""

    models: list[nn.Module]
    config: TrainConfig
    checkpoints: list[Path]


def load_run(run_dir: Path, task: str, device: torch.device, channels_last: bool = True,
             allow_partial: bool = False) -> RunModels:
    """Rebuild a run's model(s) from their checkpoints alone (``allow_partial``: see
    :func:`~cloudpipe.data.runfolder.trained_checkpoints`).

    Raises:
        CloudpipeError: missing or unreadable checkpoints (a fold's included, unless
            ``allow_partial``), a checkpoint of the other stage, another class list, or weights
            that do not fit the architecture they claim.
    """
    paths = trained_checkpoints(run_dir, allow_partial)
    models, config = [], None
    for path in paths:
        state = load_checkpoint(path)
        if list(state["classes"]) != list(active().classes):
            raise CloudpipeError(f"checkpoint's classes {', '.join(state['classes'])} are not those of the profile "
                                 f"{active().describe()}: a run works only under its own profile", path=path)
        cfg = checkpoint_config(state, path)
        if cfg.task != task:
            raise CloudpipeError(f"checkpoint is a {cfg.task} model; this command needs a {task}", path=path)
        model = stage_for(cfg).build_model(weights="none")
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise CloudpipeError(f"weights do not fit {cfg.arch}: {str(err).splitlines()[0]}", path=path) from None
        model = model.to(device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        models.append(model)
        config = config or cfg
    return RunModels(models, config, paths)


def image_loader(paths: list[Path], size: tuple[int, int], source_shape: tuple[int, int],
                 settings: InferenceSettings, device: torch.device) -> torch.utils.data.DataLoader:
    """Ordered loader for inference: reduced-decode uint8 images (``decode="workers"``), or
    the files' bytes (``decode="device"``)."""
    workers = resolve_workers(settings.workers, device)
    on_device = settings.decode == "device"
    return torch.utils.data.DataLoader(
        JpegFiles(paths) if on_device else CloudDataset(paths, size, reduction_for(source_shape, size)),
        batch_size=settings.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_files if on_device else None,
        pin_memory=device.type == "cuda" and not on_device,
        worker_init_fn=worker_init,
        # Enough batches in flight to hide a slow file; with many workers, more would only pin memory.
        prefetch_factor=(4 if workers <= 2 else 2) if workers else None,
    )


@torch.no_grad()
def stream_probs(run: RunModels, paths: list[Path], device: torch.device, settings: InferenceSettings,
                 desc: str = "predict") -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(indices, probabilities, head)`` batch by batch, in ``paths`` order.

    Probabilities are sigmoid outputs averaged over the run's models (and over the flipped views
    :data:`TTA_VIEWS` of ``settings.tta_views`` with ``settings.tta``, and over the sizes of
    ``settings.tta_scales``, see :func:`scaled`): (B, 4) for a classifier, (B, 4, H, W)
    at the model's input size for a segmentation model. ``head``: a segmentation model's
    classification-head presence (B, 4), averaged alike, when its models return
    ``(masks, labels)``; else None. All images are header-checked first, so a missing, corrupt
    or truncated file stops the run before any output. With ``settings.compile`` a short last
    batch is padded to the batch size, so the compiled graph serves every batch.
    """
    source_shape = check_images(paths)
    size = tuple(run.config.image_size)
    reduction = reduction_for(source_shape, size)
    loader = image_loader(paths, size, source_shape, settings, device)
    amp_dtype = autocast(device, settings.amp and run.config.amp)
    flips = TTA_VIEWS[settings.tta_views] if settings.tta else (None,)
    models = [compile_model(m, inference=True) for m in run.models] if settings.compile else run.models
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not settings.progress, leave=False):
        if settings.decode == "device":
            images = decode_batch(batch["data"], [paths[i] for i in batch["index"]], size, reduction, device)
        else:
            images = batch["image"].to(device, non_blocking=True).permute(0, 3, 1, 2)
        n = len(images)
        if settings.compile and n < settings.batch_size:
            padding = images[-1:].expand(settings.batch_size - n, *images.shape[1:])
            images = torch.cat([images, padding]).contiguous(memory_format=torch.channels_last)
        probs, head = batch_probs(models, images, flips, amp_dtype, settings.tta_scales)
        yield batch["index"].numpy(), probs[:n], None if head is None else head[:n]


def batch_probs(models: list[nn.Module], images: torch.Tensor, flips: tuple[tuple[int, ...] | None, ...],
                amp_dtype: torch.dtype | None, scales: tuple[float, ...] = (1.0,)) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The mean sigmoid output of ``models`` over the flipped views ``flips`` at each of the
    ``scales`` (:func:`scaled`; masks resized back) of a uint8 NCHW batch on the models' device,
    and of their classification heads (None without): see :func:`stream_probs`."""
    total = head = None
    for model in models:
        for scale in scales:
            view = scaled(images, scale)
            for dims in flips:
                with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = model(view if dims is None else view.flip(dims))
                if isinstance(logits, tuple):  # (masks, labels) of a segmentation model with a head
                    logits, labels = logits
                    head = torch.sigmoid(labels.float()) + (0 if head is None else head)
                probs = torch.sigmoid(logits.float())
                if dims is not None and probs.ndim == 4:
                    probs = probs.flip(dims)  # masks flipped back; presence is flip-invariant
                if probs.ndim == 4 and probs.shape[-2:] != images.shape[-2:]:
                    probs = nn.functional.interpolate(probs, size=images.shape[-2:], mode="bilinear", align_corners=False)
                total = probs if total is None else total + probs
    count = len(models) * len(flips) * len(scales)
    return total / count, None if head is None else head / count


def predict_presence(run_dir: Path, paths: list[Path], settings: InferenceSettings, desc: str = "predict",
                     dist: Dist | None = None) -> np.ndarray:
    """Presence probabilities (n, 4) of a classifier run over ``paths`` (``desc``: the progress
    bar's label). Under ``torchrun`` (``dist``), each rank runs its :meth:`~Dist.shard` of the
    images and every rank gets all the rows."""
    dist = dist or Dist()
    mine = dist.shard(paths)
    out = np.empty((len(mine), len(active().classes)), dtype=np.float32)
    with dist.together():  # a bad image in one rank's share stops every rank with its error
        device = resolve_device(settings.device, dist)
        run = load_run(run_dir, "classifier", device, allow_partial=settings.allow_partial)
        if mine:
            # Kept on the device until the end: no synchronisation with the GPU per batch.
            parts = [(indices, probs) for indices, probs, _ in stream_probs(run, mine, device, settings, desc=desc)]
            out[np.concatenate([i for i, _ in parts])] = torch.cat([p for _, p in parts]).float().cpu().numpy()
    return dist.join(dist.gather(out))
