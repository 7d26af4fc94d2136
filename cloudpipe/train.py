"""One training loop for both stages (presence classifier and segmentation model).

AMP (fp16/bf16 on CUDA, bf16 on CPU), gradient accumulation, ReduceLROnPlateau, ``best.pt``
and ``last.pt`` holding only tensors and plain values, exact ``--resume``, K folds with
out-of-fold validation probabilities, and DistributedDataParallel under ``torchrun`` (only
rank 0 writes). Data order and augmentation are seeded per epoch, so a resumed run replays
exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from cloudpipe import __version__
from cloudpipe.checkpoint import BEST_PT, LAST_PT, load_checkpoint, save_checkpoint
from cloudpipe.competition import CLASSES
from cloudpipe.config import TrainConfig, config_from_dict, save_config
from cloudpipe.data import TrainData, load_train_data
from cloudpipe.datasets import CloudDataset, worker_init
from cloudpipe.devices import Dist, autocast, resolve_device
from cloudpipe.errors import CloudpipeError
from cloudpipe.images import reduction_for
from cloudpipe.models import build_model
from cloudpipe.outputs import write_csv
from cloudpipe.runs import CONFIG_YAML, METRICS_CSV, VAL_PROBS_CSV, make_splits
from cloudpipe.transforms import train_transform

RESUMABLE_KEYS = ("epochs", "workers", "device")  # may change between a run and its resume


# ----------------------------------------------------------------------------- stage specifics


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss over each (image, class) pair, averaged."""
    probs = torch.sigmoid(logits).flatten(2)
    target = target.flatten(2)
    inter = (probs * target).sum(-1)
    total = probs.sum(-1) + target.sum(-1)
    return (1 - (2 * inter + 1) / (total + 1)).mean()


def stage_loss(task: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE for the classifier; BCE + soft Dice for segmentation (computed in float32)."""
    logits, target = logits.float(), target.float()
    loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
    return loss + _dice_loss(logits, target) if task == "segmentation" else loss


def stage_outputs(task: str, logits: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """What validation keeps per sample: classifier probabilities (n, 4), or segmentation
    pair statistics (n, 4, 3) = (intersection, predicted area, true area) at threshold 0.5."""
    if task == "classifier":
        return torch.sigmoid(logits.float()).cpu().numpy()
    pred = logits.float() > 0
    truth = target > 0
    stats = torch.stack([(pred & truth).sum((2, 3)), pred.sum((2, 3)), truth.sum((2, 3))], dim=-1)
    return stats.cpu().numpy()


def stage_metrics(task: str, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Per-class validation metric and its mean ``score`` (accuracy at 0.5, or Dice)."""
    if task == "classifier":
        per_class = ((outputs >= 0.5) == (labels > 0)).mean(axis=0)
    else:
        inter, pred, truth = outputs[..., 0], outputs[..., 1], outputs[..., 2]
        total = pred + truth
        per_class = np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1)).mean(axis=0)
    out = {f"val_{c}": float(v) for c, v in zip(CLASSES, per_class)}
    out["score"] = float(per_class.mean())
    return out


def score_name(task: str) -> str:
    return "val_accuracy" if task == "classifier" else "val_dice"


# ----------------------------------------------------------------------------- the loop


@dataclass
class FitResult:
    """Summary of one trained model."""

    out_dir: Path
    best_epoch: int
    best_score: float
    epochs: int
    history: list[dict] = field(default_factory=list)


def _epoch_order(n: int, seed: int, epoch: int, dist: Dist) -> list[int]:
    """This rank's shuffled sample order for an epoch (padded so all ranks take equal steps)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 10_007 + epoch)).tolist()
    per_rank = math.ceil(n / dist.world)
    order += order[: per_rank * dist.world - n]
    return order[dist.rank :: dist.world]


def _loader(dataset: CloudDataset, indices: list[int], config: TrainConfig, device: torch.device):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=indices,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=worker_init,
        persistent_workers=False,
    )


def _check_run_dir(out_dir: Path, resume: bool, config: TrainConfig) -> dict | None:
    """Refuse to mix runs; on resume, return the ``last.pt`` state and check the config."""
    last = out_dir / LAST_PT
    if not resume:
        if (out_dir / CONFIG_YAML).exists() or last.exists():
            raise CloudpipeError("holds another run; pass --resume to continue it, or choose another --out", path=out_dir)
        return None
    if not last.exists():
        raise CloudpipeError(f"nothing to resume (no {LAST_PT})", path=out_dir)
    state = load_checkpoint(last)
    saved = config_from_dict(state["config"]).to_dict()
    wanted = config.to_dict()
    changed = [k for k in wanted if k not in RESUMABLE_KEYS and wanted[k] != saved[k]]
    if changed:
        raise CloudpipeError(
            f"--resume with different settings ({', '.join(f'{k}: {saved[k]!r} -> {wanted[k]!r}' for k in changed)}); "
            f"only {', '.join(RESUMABLE_KEYS)} may change",
            path=out_dir,
        )
    return state


def fit(
    config: TrainConfig,
    data: TrainData,
    train_images: list[str],
    val_images: list[str],
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    dist: Dist | None = None,
) -> FitResult:
    """Train one model on ``train_images``, validating on ``val_images`` every epoch.

    Writes into ``out_dir`` (rank 0 only): ``config.yaml``, ``last.pt`` every epoch, ``best.pt``
    when the validation score improves (classifier: accuracy at 0.5; segmentation: Dice),
    ``metrics.csv``, and for the classifier ``val_probs.csv`` of the best epoch.

    Raises:
        CloudpipeError: the folder holds another run (without ``resume``), nothing to resume,
            or the resume changes settings that must not change.
    """
    dist = dist or Dist.from_env()
    out_dir = Path(out_dir)
    state = _check_run_dir(out_dir, resume, config)
    device = resolve_device(config.device, dist)
    task = config.task
    torch.manual_seed(config.seed)

    size = tuple(config.image_size)
    reduction = reduction_for(data.image_shape, size)
    rles = data.rles if task == "segmentation" else None

    def dataset(images: list[str], transform) -> CloudDataset:
        return CloudDataset(
            data.paths(images),
            size,
            reduction,
            labels=data.labels.loc[images].to_numpy(),
            rles=None if rles is None else rles.loc[images].to_numpy().tolist(),
            mask_shape=data.image_shape,
            transform=transform,
            seed=config.seed,
        )

    train_set = dataset(train_images, train_transform(config))
    val_set = dataset(val_images, None)
    val_labels = data.labels.loc[val_images].to_numpy()

    model = build_model(config, weights="none" if state else None).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=config.patience)
    amp_dtype = autocast(device, config.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start_epoch, best_score, best_epoch, history = 0, -math.inf, 0, []
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        start_epoch, best_score, best_epoch = state["epoch"], state["best_score"], state["best_epoch"]
        history = list(state["history"])
    net = dist.wrap(model, device)

    dist.barrier()  # every rank has checked the folder before rank 0 writes into it
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / CONFIG_YAML)
    score_key = score_name(task)
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        train_set.set_epoch(epoch)
        net.train()
        loader = _loader(train_set, _epoch_order(len(train_set), config.seed, epoch, dist), config, device)
        steps = len(loader)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False, disable=not (progress and dist.is_main))
        loss_sum, seen = torch.zeros((), device=device), 0  # summed on the device: no sync per step
        optimizer.zero_grad(set_to_none=True)
        for step, batch in enumerate(bar):
            images = batch["image"].to(device, non_blocking=True).permute(0, 3, 1, 2)
            target = batch["target"].to(device, non_blocking=True)
            last_micro = (step + 1) % config.accumulate == 0 or step + 1 == steps
            # The last accumulation group of an epoch may be short: scale by its real size.
            group = config.accumulate if step < steps - steps % config.accumulate else steps % config.accumulate
            with dist.no_sync(net, sync=last_micro):
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = stage_loss(task, net(images), target)
                scaler.scale(loss / group).backward()
            if last_micro:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach().float() * len(images)
            seen += len(images)
            if step % 10 == 9 or step + 1 == steps:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
        train_loss = dist.mean(loss_sum.item(), seen)

        val_loss, outputs = evaluate_split(net, val_set, config, device, amp_dtype, dist)
        metrics = stage_metrics(task, outputs, val_labels)
        scheduler.step(val_loss)
        score = metrics.pop("score")
        improved = score > best_score
        if improved:
            best_score, best_epoch = score, epoch + 1
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, score_key: score, **metrics,
               "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - started, 2)}
        history.append(row)
        if dist.is_main:
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": {"torch": torch.get_rng_state()},
                "epoch": epoch + 1,
                "best_score": best_score,
                "best_epoch": best_epoch,
                "history": history,
                "config": config.to_dict(),
                "score_name": score_key,
                "classes": list(CLASSES),
                "version": __version__,
            }
            if improved:
                save_checkpoint({k: checkpoint[k] for k in ("model", "epoch", "best_score", "best_epoch", "config", "score_name", "classes", "version")}, out_dir / BEST_PT)
                if task == "classifier":
                    probs = pd.DataFrame(outputs, columns=list(CLASSES)).assign(image=val_images)
                    write_csv(probs[["image", *CLASSES]], out_dir / VAL_PROBS_CSV, float_format="%.6f")
            save_checkpoint(checkpoint, out_dir / LAST_PT)
            write_csv(pd.DataFrame(history), out_dir / METRICS_CSV, float_format="%.6g")
            tqdm.write(
                f"epoch {epoch + 1}/{config.epochs}  train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
                f"{score_key} {score:.4f}  lr {row['lr']:.2g}  {row['seconds']:.1f}s" + ("  *best" if improved else "")
            )
    return FitResult(out_dir, best_epoch, best_score, config.epochs, history)


@torch.no_grad()
def evaluate_split(net: nn.Module, dataset: CloudDataset, config: TrainConfig, device: torch.device,
                   amp_dtype: torch.dtype | None, dist: Dist) -> tuple[float, np.ndarray]:
    """Validation loss and per-sample outputs (see :func:`stage_outputs`) over ``dataset``,
    sharded over ranks and gathered back in dataset order on every rank."""
    net.eval()
    indices = list(range(dist.rank, len(dataset), dist.world))
    loader = _loader(dataset, indices, config, device)
    outputs, loss_sum = [], 0.0
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True).permute(0, 3, 1, 2)
        target = batch["target"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = net(images)
        loss_sum += stage_loss(config.task, logits, target).item() * len(images)
        outputs.append(stage_outputs(config.task, logits, target))
    mine = np.concatenate(outputs) if outputs else np.empty((0, len(CLASSES)))
    gathered = dist.gather((indices, mine, loss_sum))
    ordered = np.empty((len(dataset), *mine.shape[1:]), dtype=mine.dtype)
    total_loss = 0.0
    for idx, out, part_loss in gathered:
        if len(idx):
            ordered[idx] = out
        total_loss += part_loss
    return total_loss / len(dataset), ordered


# ----------------------------------------------------------------------------- runs and folds


def train_run(
    config: TrainConfig,
    data_dir: Path,
    out_dir: Path,
    *,
    resume: bool = False,
    fold: int | None = None,
    progress: bool = True,
) -> list[FitResult]:
    """Train a model (or K fold models) as the config says, into ``out_dir``.

    With ``config.folds >= 2``, fold i goes to ``out_dir/fold{i}/`` (only fold ``fold`` when
    given), and once every fold is done, ``out_dir/val_probs.csv`` holds the out-of-fold
    probabilities of every training image (classifier).

    Returns:
        One result per model trained (on rank 0; other ranks of a torchrun job get ``[]``).
    """
    dist = Dist.from_env()
    try:
        data = load_train_data(data_dir, check_masks=config.task == "segmentation")
        splits = make_splits(config, data.labels)
        if config.folds < 2:
            if fold is not None:
                raise CloudpipeError("--fold needs --folds K (K >= 2)")
            results = [fit(config, data, *splits[0], out_dir, resume=resume, progress=progress, dist=dist)]
            return results if dist.is_main else []
        if fold is not None and not 0 <= fold < config.folds:
            raise CloudpipeError(f"--fold must be in 0..{config.folds - 1}, got {fold}")
        out_dir = Path(out_dir)
        if dist.is_main:
            _check_top_dir(out_dir, config, resume or fold is not None)
        results = []
        for i, (train_images, val_images) in enumerate(splits):
            if fold is not None and i != fold:
                continue
            fold_dir = out_dir / f"fold{i}"
            fold_resume = resume and (fold_dir / LAST_PT).exists()
            if fold_resume and load_checkpoint(fold_dir / LAST_PT)["epoch"] >= config.epochs:
                continue  # finished before the interruption
            results.append(fit(config, data, train_images, val_images, fold_dir, resume=fold_resume, progress=progress, dist=dist))
        if dist.is_main and config.task == "classifier":
            write_out_of_fold(out_dir, config.folds, list(data.labels.index))
        return results if dist.is_main else []
    finally:
        dist.close()


def _check_top_dir(out_dir: Path, config: TrainConfig, continuing: bool) -> None:
    """The folds' parent folder: a fresh one, or (when continuing) one of the same config."""
    config_path = out_dir / CONFIG_YAML
    if config_path.exists() and not continuing:
        raise CloudpipeError("holds another run; pass --resume to continue it, or choose another --out", path=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, config_path)


def write_out_of_fold(out_dir: Path, folds: int, images: list[str]) -> Path | None:
    """Concatenate the folds' ``val_probs.csv`` into ``out_dir/val_probs.csv`` (every training
    image exactly once, in ``train.csv`` order) once all folds have one."""
    parts = [out_dir / f"fold{i}" / VAL_PROBS_CSV for i in range(folds)]
    if not all(p.exists() for p in parts):
        return None
    probs = pd.concat([pd.read_csv(p) for p in parts]).set_index("image")
    if sorted(probs.index) != sorted(images):
        raise CloudpipeError("fold validation images do not cover the training images exactly once", path=out_dir)
    path = out_dir / VAL_PROBS_CSV
    write_csv(probs.loc[images].reset_index(), path, float_format="%.6f")
    return path
