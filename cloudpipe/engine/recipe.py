"""The training recipe a config names: optimizer (with the encoder's own learning rate),
learning-rate schedule, weight averaging (EMA or SWA) and frozen normalisation layers.

Everything here is a torch implementation chosen by name (``torch.optim``,
``torch.optim.lr_scheduler``, ``torch.optim.swa_utils``); the training loop
(:mod:`cloudpipe.engine.train`) only calls these.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cloudpipe.engine.config import TrainConfig
from cloudpipe.engine.stages import Stage

WARMUP_START = 0.01
"""A cosine warmup starts at ``lr * WARMUP_START`` and rises linearly to ``lr``."""


def param_groups(model: nn.Module, stage: Stage, config: TrainConfig) -> list[dict]:
    """The trainable parameters, in one group at ``lr``, or with ``encoder_lr_ratio != 1`` two:
    the rest at ``lr`` first (the lr ``metrics.csv`` logs), then the encoder at ``lr * ratio``."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if config.encoder_lr_ratio == 1:
        return [{"params": [p for _, p in named], "lr": config.lr}]
    encoder = [p for name, p in named if stage.in_encoder(name)]
    rest = [p for name, p in named if not stage.in_encoder(name)]
    groups = [{"params": rest, "lr": config.lr}, {"params": encoder, "lr": config.lr * config.encoder_lr_ratio}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, stage: Stage, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum 0.9, Nesterov) over :func:`param_groups`. Adam and AdamW are
    fused (one kernel per parameter: quicker steps than the default implementation, the same
    update; profiled in benchmarks/README.md)."""
    groups, decay = param_groups(model, stage, config), config.weight_decay
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=decay, fused=True)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=decay)
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=decay, fused=True)


def steps_per_epoch(batches: int, accumulate: int) -> int:
    """Optimizer steps in an epoch of ``batches`` batches (the last accumulation group may be short)."""
    return math.ceil(batches / accumulate)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps: int):
    """The config's schedule: ``plateau`` (ReduceLROnPlateau on the validation loss, stepped
    per epoch), ``cosine`` (to 0 over the run, after ``warmup_epochs`` of linear warmup) or
    ``onecycle`` (its rising phase ``warmup_epochs`` long, else torch's 30%), both stepped per
    optimizer step; ``steps``: optimizer steps per epoch."""
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=config.patience)
    total, warmup = config.epochs * steps, config.warmup_epochs * steps
    if config.schedule == "onecycle":
        peaks = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total,
                                                   pct_start=warmup / total if warmup else 0.3)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup)
    if not warmup:
        return cosine
    rise = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [rise, cosine], milestones=[warmup])


def per_step(config: TrainConfig) -> bool:
    """Whether the schedule steps once per optimizer step (else once per epoch on the validation loss)."""
    return config.schedule != "plateau"


def make_average(model: nn.Module, config: TrainConfig) -> AveragedModel | None:
    """The weight average the config asks for, over parameters and buffers (BatchNorm statistics
    averaged alike, so no extra pass over the data): an EMA with decay ``ema``, updated every
    optimizer step; or SWA's equal-weight mean, updated at the end of each of the last
    ``swa_epochs`` epochs; None for neither."""
    if config.ema:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
    if config.swa_epochs:
        return AveragedModel(model, use_buffers=True)
    return None


def swa_epoch(config: TrainConfig, epoch: int) -> bool:
    """Whether epoch ``epoch`` (0-based) ends inside SWA's window (the last ``swa_epochs``)."""
    return config.swa_epochs > 0 and epoch >= config.epochs - config.swa_epochs


def keep_frozen_in_eval(model: nn.Module) -> None:
    """Put every normalisation layer whose parameters are all frozen in eval mode, so that its
    running statistics stay as they were (call after ``model.train()``; as smp's
    ``freeze_encoder`` does)."""
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._NormBase) and params and not any(p.requires_grad for p in params):
            module.eval()
