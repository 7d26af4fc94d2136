"""Batched, streaming inference of a run's model(s) on CPU or GPU.

Images are decoded reduced in DataLoader workers, cross to the device as uint8, run in
``channels_last`` under autocast (bf16 on CPU), optionally with flip TTA, and leave as
probabilities batch by batch: memory stays flat however many images there are. A run with
fold models (``fold*/best.pt``) averages all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cloudpipe.core.competition import CLASSES
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.datasets import CloudDataset, worker_init
from cloudpipe.data.images import check_images, reduction_for
from cloudpipe.data.runfolder import trained_checkpoints
from cloudpipe.engine.checkpoint import load_checkpoint
from cloudpipe.engine.config import TrainConfig, config_from_dict
from cloudpipe.engine.devices import Dist, autocast, resolve_device
from cloudpipe.engine.settings import InferenceSettings
from cloudpipe.engine.stages import stage_for


@dataclass
class RunModels:
    """The trained model(s) of a run folder, ready for inference."""

    models: list[nn.Module]
    config: TrainConfig
    checkpoints: list[Path]


def load_run(run_dir: Path, task: str, device: torch.device, channels_last: bool = True) -> RunModels:
    """Rebuild a run's model(s) from their checkpoints alone.

    Raises:
        CloudpipeError: missing or unreadable checkpoints, a checkpoint of the other stage,
            another class list, or weights that do not fit the architecture they claim.
    """
    paths = trained_checkpoints(run_dir)
    models, config = [], None
    for path in paths:
        state = load_checkpoint(path)
        if list(state["classes"]) != list(CLASSES):
            raise CloudpipeError(f"checkpoint classes {state['classes']} are not {list(CLASSES)}", path=path)
        cfg = config_from_dict(state["config"])
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


def image_loader(paths: list[Path], size: tuple[int, int], source_shape: tuple[int, int], batch_size: int,
                 workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    """Ordered, reduced-decode loader of uint8 images for inference."""
    dataset = CloudDataset(paths, size, reduction_for(source_shape, size))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=worker_init,
        prefetch_factor=4 if workers else None,
    )


@torch.no_grad()
def stream_probs(run: RunModels, paths: list[Path], device: torch.device, settings: InferenceSettings,
                 desc: str = "predict") -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(indices, probabilities, head)`` batch by batch, in ``paths`` order.

    Probabilities are sigmoid outputs averaged over the run's models (and over identity,
    horizontal and vertical flips with ``settings.tta``): (B, 4) for a classifier, (B, 4, H, W)
    at the model's input size for a segmentation model. ``head``: a segmentation model's
    classification-head presence (B, 4), averaged alike, when its models return
    ``(masks, labels)``; else None. All images are header-checked first, so a missing, corrupt
    or truncated file stops the run before any output.
    """
    source_shape = check_images(paths)
    size = tuple(run.config.image_size)
    loader = image_loader(paths, size, source_shape, settings.batch_size, settings.workers, device)
    amp_dtype = autocast(device, settings.amp and run.config.amp)
    flips = [None, (3,), (2,)] if settings.tta else [None]
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not settings.progress, leave=False):
        images = batch["image"].to(device, non_blocking=True).permute(0, 3, 1, 2)
        total = head = None
        for model in run.models:
            for dims in flips:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = model(images if dims is None else images.flip(dims))
                if isinstance(logits, tuple):  # (masks, labels) of a segmentation model with a head
                    logits, labels = logits
                    head = torch.sigmoid(labels.float()) + (0 if head is None else head)
                probs = torch.sigmoid(logits.float())
                if dims is not None and probs.ndim == 4:
                    probs = probs.flip(dims)  # masks flipped back; presence is flip-invariant
                total = probs if total is None else total + probs
        count = len(run.models) * len(flips)
        yield batch["index"].numpy(), total / count, None if head is None else head / count


def predict_presence(run_dir: Path, paths: list[Path], settings: InferenceSettings, desc: str = "predict",
                     dist: Dist | None = None) -> np.ndarray:
    """Presence probabilities (n, 4) of a classifier run over ``paths`` (``desc``: the progress
    bar's label). Under ``torchrun`` (``dist``), each rank runs its :meth:`~Dist.shard` of the
    images and every rank gets all the rows."""
    dist = dist or Dist()
    device = resolve_device(settings.device, dist)
    run = load_run(run_dir, "classifier", device)
    mine = dist.shard(paths)
    out = np.empty((len(mine), len(CLASSES)), dtype=np.float32)
    if mine:
        for indices, probs, _ in stream_probs(run, mine, device, settings, desc=desc):
            out[indices] = probs.cpu().numpy()
    return dist.join(dist.gather(out))
