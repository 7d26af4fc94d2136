"""One training loop for every stage (presence classifier, segmentation model).

AMP (fp16/bf16 on CUDA, bf16 on CPU), ``channels_last``, optional ``torch.compile``, DataLoader
workers sized to the device (``workers: auto``), gradient accumulation, the config's recipe
(optimizer, schedule, EMA/SWA, gradient clipping: :mod:`cloudpipe.engine.recipe`), ``best.pt``
and ``last.pt`` holding only tensors and plain values, exact ``--resume``, K folds with
out-of-fold validation probabilities, and DistributedDataParallel under ``torchrun`` (only
rank 0 writes). Data order (torch's ``DistributedSampler`` with ``set_epoch``) and augmentation
are seeded per epoch, so a resumed run replays exactly what an uninterrupted one would have
done. What differs between the stages lives in :mod:`cloudpipe.engine.stages`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from cloudpipe import __version__
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.profile import active
from cloudpipe.data.datasets import CloudDataset, worker_init
from cloudpipe.data.images import reduction_for
from cloudpipe.data.kaggle import (
    TrainData,
    check_folds,
    data_inputs,
    kfold_splits,
    load_train_data,
    split_train_val,
)
from cloudpipe.data.outputs import write_csv, write_text
from cloudpipe.data.profiles import profile_text, require_same, run_profile
from cloudpipe.data.runfolder import (
    BEST_PT,
    CONFIG_YAML,
    LAST_PT,
    METRICS_CSV,
    PROFILE_YAML,
    SPLITS_CSV,
    VAL_PROBS_CSV,
    ModelSplit,
    check_training_paths,
    make_model_splits,
    model_dirs,
    read_splits,
    training_files,
    write_splits,
)
from cloudpipe.engine.checkpoint import load_checkpoint, save_checkpoint
from cloudpipe.engine.config import TrainConfig, checkpoint_config, load_run_config, save_config
from cloudpipe.engine.devices import autocast, compile_model, resolve_device, resolve_workers
from cloudpipe.engine.dist import Dist
from cloudpipe.engine.recipe import (
    keep_frozen_in_eval,
    make_average,
    make_optimizer,
    make_scheduler,
    per_step,
    steps_per_epoch,
    swa_epoch,
)
from cloudpipe.engine.stages import Stage, stage_for
from cloudpipe.engine.tracking import OVERLAYS, RunClock, Tracker, class_grid, scalar_tags

if TYPE_CHECKING:
    from cloudpipe.engine.runner import Runner

log = logging.getLogger(__name__)
"""Each epoch's line (the command line prints it above the progress bar)."""
RESUMABLE_KEYS = ("epochs", "workers", "device", "compile", "tensorboard", "keep_last")  # may change between a run and its resume


def resumable_keys(config: TrainConfig) -> tuple[str, ...]:
    """The settings a resume may change: not ``epochs`` where the schedule or SWA's window
    depends on the run's length."""
    fixed_length = per_step(config) or config.swa_epochs > 0
    return tuple(k for k in RESUMABLE_KEYS if not (k == "epochs" and fixed_length))
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng", "epoch", "best_score", "best_epoch", "history")
"""What ``last.pt`` holds besides the model, to continue a run exactly (``best.pt`` has none of it)."""
BEST_KEYS = ("model", "epoch", "best_score", "best_epoch", "config", "score_name", "classes", "version")


@dataclass
class FitResult:
    """Summary of one trained model."""

    out_dir: Path
    best_epoch: int
    best_score: float
    epochs: int
    history: list[dict] = field(default_factory=list)


def make_splits(config: TrainConfig, labels: pd.DataFrame, pseudo: tuple[str, ...] | list[str] = ()) -> list[tuple[list[str], list[str]]]:
    """The (train, val) image lists a new run trains on: one hold-out split, or K folds, of the
    images with real labels; the ``pseudo``-labelled images train in every one and validate in none."""
    real = labels.drop(index=list(pseudo))
    if config.folds >= 2:
        splits = kfold_splits(real, config.folds, config.split_seed)
    else:
        splits = [split_train_val(real, config.val_fraction, config.split_seed)]
    return [(train + list(pseudo), val) for train, val in splits]


class Trainer:
    """One model's training: set up (data, model, optimiser, resumed state), then per epoch
    :meth:`train_epoch`, :meth:`validate` and :meth:`save`."""

    def __init__(self, stage: Stage, data: TrainData, split: ModelSplit, dist: Dist, state: dict | None):
        config = self.config = stage.config
        self.stage, self.split, self.dist = stage, split, dist
        self.out_dir = split.folder
        self.device = resolve_device(config.device, dist)
        torch.manual_seed(config.seed)
        size = tuple(config.image_size)
        reduction = reduction_for(data.image_shape, size)

        def dataset(images: list[str], transform) -> CloudDataset:
            return CloudDataset(data.paths(images), size, reduction, labels=data.labels.loc[images].to_numpy(),
                                rles=data.rles.loc[images].to_numpy().tolist() if stage.needs_masks else None,
                                mask_shape=data.image_shape, transform=transform, seed=config.seed)

        self.train_set = dataset(split.train, stage.augmentation())
        self.val_set = dataset(split.val, None)
        self.val_labels = data.labels.loc[split.val].to_numpy()
        self.sampler = DistributedSampler(self.train_set, num_replicas=dist.world, rank=dist.rank, shuffle=True,
                                          seed=config.seed)

        self.model = stage.build_model(weights="none" if state else None).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, stage, config)
        batches = math.ceil(len(self.sampler) / config.batch_size)
        self.scheduler = make_scheduler(self.optimizer, config, steps_per_epoch(batches, config.accumulate))
        self.average = make_average(self.model, config)
        self.amp_dtype = autocast(self.device, config.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.start_epoch, self.best_score, self.best_epoch, self.history = 0, -math.inf, 0, []
        if state:
            try:
                self.model.load_state_dict(state.get("trained", state["model"]))
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
                self.scaler.load_state_dict(state["scaler"])
                if self.average is not None:
                    self.average.load_state_dict(state["average"])
                torch.set_rng_state(state["rng"]["torch"])
            except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise CloudpipeError(f"cannot resume from this checkpoint ({reason})", path=split.folder / LAST_PT) from None
            self.start_epoch, self.best_score, self.best_epoch = state["epoch"], state["best_score"], state["best_epoch"]
            self.history = list(state["history"])
        self.net = dist.wrap(self.model, self.device)
        if config.compile:
            self.net = compile_model(self.net, inference=False)
        self.tracker = Tracker(self.out_dir, self.start_epoch) if config.tensorboard and dist.is_main else None
        self.clock: RunClock | None = None

    def _loader(self, dataset: CloudDataset, sampler) -> DataLoader:
        workers = resolve_workers(self.config.workers, self.device)
        return DataLoader(dataset, batch_size=self.config.batch_size, sampler=sampler, num_workers=workers,
                          pin_memory=self.device.type == "cuda", worker_init_fn=worker_init,
                          prefetch_factor=4 if workers else None)

    def _forward(self, batch: dict, net: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch["image"].to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        target = batch["target"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return (self.net if net is None else net)(images), target

    def train_epoch(self, epoch: int, progress: bool) -> float:
        """One pass over this rank's share of the training images; the mean loss over ranks."""
        config = self.config
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        self.net.train()
        keep_frozen_in_eval(self.model)
        loader = self._loader(self.train_set, self.sampler)
        steps = len(loader)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
                   disable=not (progress and self.dist.is_main))
        loss_sum, seen = torch.zeros((), device=self.device), 0  # summed on the device: no sync per step
        self.optimizer.zero_grad(set_to_none=True)
        mixing = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 100_003 + self.dist.rank)
        for step, batch in enumerate(bar):
            batch = self.stage.mix(batch, mixing)
            last_micro = (step + 1) % config.accumulate == 0 or step + 1 == steps
            # The last accumulation group of an epoch may be short: scale by its real size.
            group = config.accumulate if step < steps - steps % config.accumulate else steps % config.accumulate
            with self.dist.no_sync(self.net, sync=last_micro):
                logits, target = self._forward(batch)
                loss = self.stage.loss(logits, target)
                self.scaler.scale(loss / group).backward()
            if last_micro:
                self._step()
            loss_sum += loss.detach().float() * len(target)
            seen += len(target)
            if step % 10 == 9 or step + 1 == steps:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
        if swa_epoch(config, epoch):
            self.average.update_parameters(self.model)
        return self.dist.mean(loss_sum.item(), seen)

    def _step(self) -> None:
        """One optimizer step: gradients clipped (unscaled first under fp16), the EMA and a
        per-step schedule moved on."""
        config = self.config
        if config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if config.ema:
            self.average.update_parameters(self.model)
        if per_step(config):
            self.scheduler.step()

    def predicting_model(self, epoch: int) -> torch.nn.Module:
        """The model this epoch validates and ``best.pt`` keeps: the EMA, SWA's average once
        its window began, else the trained model (as the training loop runs it)."""
        if self.config.ema or swa_epoch(self.config, epoch):
            return self.average.module
        return self.net

    @torch.no_grad()
    def validate(self, epoch: int) -> tuple[float, np.ndarray]:
        """Validation loss and per-image outputs (see :meth:`Stage.outputs`) of
        :meth:`predicting_model`, sharded over ranks and gathered back in validation order on
        every rank."""
        net = self.predicting_model(epoch).eval()
        indices = list(range(self.dist.rank, len(self.val_set), self.dist.world))
        outputs, loss_sum = [], 0.0
        for batch in self._loader(self.val_set, indices):
            logits, target = self._forward(batch, net)
            loss_sum += self.stage.loss(logits, target).item() * len(target)
            outputs.append(self.stage.outputs(logits, target))
        mine = np.concatenate(outputs) if outputs else np.empty((0, len(active().classes)))
        ordered = np.empty((len(self.val_set), *mine.shape[1:]), dtype=mine.dtype)
        total_loss = 0.0
        for idx, out, part_loss in self.dist.gather((indices, mine, loss_sum)):
            if len(idx):
                ordered[idx] = out
            total_loss += part_loss
        return total_loss / len(self.val_set), ordered

    @torch.no_grad()
    def overlays(self, epoch: int, count: int = OVERLAYS) -> list[np.ndarray]:
        """:func:`~cloudpipe.engine.tracking.class_grid` of the first ``count`` validation images
        under the model this epoch validated (pixel threshold 0.5); segmentation only."""
        from torch.utils.data import default_collate

        samples = [self.val_set[i] for i in range(min(count, len(self.val_set)))]
        if not samples:
            return []
        batch = default_collate(samples)
        logits, target = self._forward(batch, self.predicting_model(epoch).eval())
        masks = logits[0] if isinstance(logits, tuple) else logits  # (masks, presence) with a classification head
        pred = (torch.sigmoid(masks.float()) > 0.5).cpu().numpy()
        images, truth = batch["image"].numpy(), target.cpu().numpy()
        return [class_grid(images[i], truth[i], pred[i]) for i in range(len(samples))]

    def record(self, epoch: int, train_loss: float, val_loss: float, outputs: np.ndarray, seconds: float) -> bool:
        """Score the epoch, step the LR schedule, append the metrics row; True when best so far.

        Raises:
            CloudpipeError: a loss, the outputs or the score that picks ``best.pt`` not finite
                (the run diverged); nothing of this epoch is saved. A per-class ROC AUC may be
                NaN: it is undefined where the validation images hold one label only.
        """
        def check(name: str, value: float) -> None:
            if not math.isfinite(value):
                raise CloudpipeError(f"epoch {epoch + 1}: {name} is {value}: training diverged, the run stopped and "
                                     "this epoch was not saved (try a lower --lr or --weight-decay, or --grad-clip)",
                                     path=self.out_dir)

        for name, value in {"train_loss": train_loss, "val_loss": val_loss}.items():
            check(name, value)
        if not np.isfinite(outputs).all():
            check("a validation output", float("nan"))
        metrics = self.stage.metrics(outputs, self.val_labels)
        check(self.stage.score_name, metrics[self.stage.score_name])
        if not per_step(self.config):
            self.scheduler.step(val_loss)
        score = metrics[self.stage.score_name]
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch = score, epoch + 1
        self.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, **metrics,
                             "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 2)})
        return improved

    def save(self, epoch: int, improved: bool, outputs: np.ndarray) -> None:
        """``last.pt`` and ``metrics.csv`` every epoch; ``best.pt`` (and the stage's validation
        table) when the score improved; the epoch's line. Rank 0 only: the other ranks write nothing."""
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        predicting = self.predicting_model(epoch)
        checkpoint = {
            "model": (self.model if predicting is self.net else predicting).state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state()}, "epoch": epoch + 1, "best_score": self.best_score,
            "best_epoch": self.best_epoch, "history": self.history, "config": self.config.to_dict(),
            "score_name": self.stage.score_name, "classes": list(active().classes), "version": __version__,
        }
        if self.average is not None:
            checkpoint["trained"] = self.model.state_dict()  # the model the optimizer trains, to resume
            checkpoint["average"] = self.average.state_dict()
        if improved:
            save_checkpoint({k: checkpoint[k] for k in BEST_KEYS}, self.out_dir / BEST_PT)
            table = self.stage.best_outputs(outputs, self.split.val)
            if table is not None:
                write_csv(table, self.out_dir / VAL_PROBS_CSV, float_format="%.6f")
        save_checkpoint(checkpoint, self.out_dir / LAST_PT)
        write_csv(pd.DataFrame(self.history), self.out_dir / METRICS_CSV, float_format="%.6g")
        row = self.history[-1]
        if self.tracker is not None:
            self.tracker.log(epoch + 1, scalar_tags(row, self.stage.metric_columns),
                             self.overlays(epoch) if self.stage.needs_masks else [])
        where, eta = self.clock.tick(row["seconds"]) if self.clock is not None else ("", "")
        log.info(where + f"epoch {row['epoch']}/{self.config.epochs}  train_loss {row['train_loss']:.4f}  "
                 f"val_loss {row['val_loss']:.4f}  {self.stage.score_name} {row[self.stage.score_name]:.4f}  "
                 f"lr {row['lr']:.2g}  {row['seconds']:.1f}s" + ("  *best" if improved else "") + eta)

    def finish(self) -> None:
        """The model trained all its epochs: its event file closed; without ``keep_last`` its
        ``last.pt`` removed (``best.pt`` is what is used). Rank 0 only."""
        if self.tracker is not None:
            self.tracker.close()
        if self.dist.is_main and not self.config.keep_last:
            (self.out_dir / LAST_PT).unlink(missing_ok=True)


def fit(trainer: Trainer, progress: bool = True) -> FitResult:
    """Train ``trainer``'s model from its start epoch to the config's last, validating and saving
    (:meth:`Trainer.save`) every epoch."""
    for epoch in range(trainer.start_epoch, trainer.config.epochs):
        started = time.perf_counter()
        train_loss = trainer.train_epoch(epoch, progress)
        val_loss, outputs = trainer.validate(epoch)
        improved = trainer.record(epoch, train_loss, val_loss, outputs, time.perf_counter() - started)
        trainer.save(epoch, improved, outputs)
    trainer.finish()
    return FitResult(trainer.out_dir, trainer.best_epoch, trainer.best_score, trainer.config.epochs, trainer.history)


# ----------------------------------------------------------------------------- runs and folds


class Progress(Enum):
    """Where one model of a run stands when a training command starts."""

    FRESH = "fresh"
    """A new run's model: trains from its first epoch."""
    RESTARTED = "failed before its first epoch"
    """Continued (``--resume``, ``--fold``) with no epoch finished: trains from its first epoch."""
    IN_PROGRESS = "in progress"
    """Continues from its ``last.pt`` (a hold-out model that trained all its epochs too, for no
    epoch: the command reports its best, and ``keep_last: false`` removes its ``last.pt``)."""
    FINISHED = "finished"
    """A fold that trained all its epochs, or a model whose ``last.pt`` ``keep_last: false``
    removed: not trained again."""


@dataclass(frozen=True)
class ModelState:
    """One model of a run as a training command finds it."""

    index: int
    """Its fold (0 for a hold-out run)."""
    split: ModelSplit
    progress: Progress
    trained: int
    """Epochs behind it."""
    checkpoint: dict | None = None
    """The ``last.pt`` it continues from (:attr:`Progress.IN_PROGRESS`)."""


@dataclass(frozen=True)
class RunState:
    """A run folder as a training command finds it: the run's models, whether the folder
    records their split already, and each model the command trains."""

    splits: list[ModelSplit]
    recorded: bool
    """The folder holds this run's ``config.yaml`` and ``splits.csv`` (a continued run keeps its split)."""
    models: list[ModelState]


def train_run(
    config: TrainConfig,
    data_dir: Path,
    out_dir: Path,
    *,
    resume: bool = False,
    fold: int | None = None,
    progress: bool = True,
) -> list[FitResult]:
    """Train a model (or K fold models) as the config says, into ``out_dir``; one result per
    model trained (on rank 0; other ranks of a torchrun job get ``[]``).

    The run folder gets ``config.yaml`` and ``splits.csv`` once the first model is built (a run
    that cannot start, e.g. for want of its ImageNet weights, writes nothing); with ``config.folds >= 2``,
    fold i goes to ``out_dir/fold{i}/`` (only fold ``fold`` when given), and once every fold is
    done, ``out_dir/val_probs.csv`` holds the out-of-fold probabilities of every training image
    (classifier). ``resume`` continues each model as :func:`run_state` finds it, before the first trains.
    """
    from cloudpipe.engine.runner import Plan, Runner

    out_dir = Path(out_dir)

    def declare() -> tuple[Plan, tuple[Stage, TrainData]]:
        if config.folds < 2 and fold is not None:
            raise CloudpipeError("--fold needs --folds K (K >= 2)")
        if fold is not None and not 0 <= fold < config.folds:
            raise CloudpipeError(f"--fold must be in 0..{config.folds - 1}, got {fold}")
        stage = stage_for(config)
        data = load_train_data(data_dir)
        if config.folds >= 2:
            check_folds(config.folds, len(data.labels) - len(data.pseudo))
        # The run folder is claimed whole (and each fold's), so that two trainings never write one
        # run; a training of one fold claims that fold alone, so folds may train side by side.
        folders = [d for i, d in enumerate(model_dirs(out_dir, config.folds)) if fold is None or i == fold]
        check_training_paths(out_dir, folders, tensorboard=config.tensorboard)
        claimed = ([out_dir] if fold is None and out_dir not in folders else []) + folders
        return Plan(data_inputs(data_dir), folders=claimed), (stage, data)

    with Runner.start() as run:
        stage, data = run.claim(declare)
        with run.together():
            state = run_state(out_dir, config, data, resume=resume, fold=fold)
        results: list[FitResult] = []
        clock = RunClock(config.folds, config.epochs * len(state.models))
        for model in state.models:
            clock.begin(model.index, model.trained)
            if model.progress is Progress.FINISHED:
                continue
            trainer = Trainer(stage, data, model.split, run.dist, model.checkpoint)
            trainer.clock = clock
            if not results:  # the first model is built (its weights found): only now is --out written
                _record_run(out_dir, config, data, state, run)
            results.append(fit(trainer, progress))
        if not results:  # every model had finished
            _record_run(out_dir, config, data, state, run)
        if run.is_main and stage.keeps_val_probs and config.folds >= 2:
            write_out_of_fold(out_dir, config.folds, data.labelled)
        return results if run.is_main else []


def run_state(out_dir: Path, config: TrainConfig, data: TrainData, *, resume: bool = False,
              fold: int | None = None) -> RunState:
    """The run in ``out_dir`` and each model a training command (``resume``, ``fold``) trains
    there, as the folder holds them; reads, writes nothing.

    A run that never finished an epoch (no ``last.pt``, ``best.pt`` or ``metrics.csv``: it failed
    or was stopped in its first) is started afresh, with the settings given, unless one fold of
    it is asked for (``--fold``: the others may be training).

    Raises:
        CloudpipeError: a fresh run into a folder holding another run; ``resume`` with nothing
            to resume; a continued run that :func:`_check_unchanged`, :func:`_check_same_images`
            or :func:`_resume_state` refuses, or that has no ``last.pt`` left to train further from.
    """
    continuing = resume or fold is not None
    config_path = out_dir / CONFIG_YAML
    finished = any(p.exists() for p in training_files(out_dir) if p.name in (LAST_PT, BEST_PT, METRICS_CSV))
    holds_run = finished or (fold is not None and config_path.exists())
    if holds_run and not continuing:
        raise CloudpipeError("holds another run; pass --resume to continue it, or choose another --out", path=out_dir)
    if resume and not config_path.exists():
        raise CloudpipeError(f"nothing to resume (no {CONFIG_YAML})", path=out_dir)
    if holds_run and config_path.exists():
        require_same(active(), run_profile(out_dir), f"continued run {out_dir}")
        _check_unchanged(load_run_config(out_dir, config.task), config, out_dir)
    recorded = holds_run and config_path.exists() and (out_dir / SPLITS_CSV).exists()
    if recorded:
        splits = read_splits(out_dir, config.folds)
        _check_same_images(splits, data, out_dir)
    else:
        splits = make_model_splits(out_dir, list(data.labels.index), make_splits(config, data.labels, data.pseudo))
    models = [_model_state(i, split, config, continuing) for i, split in enumerate(splits) if fold is None or i == fold]
    return RunState(splits, recorded, models)


def _check_same_images(splits: list[ModelSplit], data: TrainData, out_dir: Path) -> None:
    """Refuse to continue a run on other training images than it recorded: one line counting
    the images gone and new, naming the first of each."""
    trained, now = set(splits[0].train + splits[0].val), set(data.labels.index)
    if trained != now:
        gone, new = sorted(trained - now), sorted(now - trained)
        diff = "; ".join(f"{len(names)} image(s) {what} train.csv (first {names[0]})"
                         for names, what in ((gone, "no longer in"), (new, "new in")) if names)
        raise CloudpipeError(f"continues a run trained on other images than --data's: {diff}; "
                             "train a new run on this data, or resume with the data it trained on",
                             path=out_dir / SPLITS_CSV)


def _model_state(index: int, split: ModelSplit, config: TrainConfig, continuing: bool) -> ModelState:
    """One model's :class:`ModelState` from its folder (a new run's, unless ``continuing``)."""
    if not continuing:
        return ModelState(index, split, Progress.FRESH, 0)
    last, metrics = split.folder / LAST_PT, split.folder / METRICS_CSV
    if last.exists():
        checkpoint = _resume_state(last, config)
        if config.folds >= 2 and checkpoint["epoch"] >= config.epochs:
            return ModelState(index, split, Progress.FINISHED, config.epochs)
        return ModelState(index, split, Progress.IN_PROGRESS, checkpoint["epoch"], checkpoint)
    if metrics.exists():  # keep_last: false removed its last.pt once it had trained all its epochs
        if len(pd.read_csv(metrics)) >= config.epochs:
            return ModelState(index, split, Progress.FINISHED, config.epochs)
        raise CloudpipeError("has no last.pt to train further from (keep_last: false removed it)", path=split.folder)
    return ModelState(index, split, Progress.RESTARTED, 0)


def _check_unchanged(saved: TrainConfig, config: TrainConfig, where: Path) -> None:
    """Refuse to continue a run (saved with ``saved``) with settings that must not change: one
    line listing each changed setting, old -> new."""
    before, wanted = saved.to_dict(), config.to_dict()
    resumable = resumable_keys(config)
    changed = [k for k in wanted if k not in resumable and wanted[k] != before[k]]
    if changed:
        raise CloudpipeError(
            f"continues a run with different settings ({', '.join(f'{k}: {before[k]!r} -> {wanted[k]!r}' for k in changed)}); "
            f"only {', '.join(resumable)} may change" + ("" if "epochs" in resumable else
                                                         " (epochs sets this run's schedule / SWA window)"),
            path=where,
        )


def _resume_state(last: Path, config: TrainConfig) -> dict:
    """A model's ``last.pt``, checked to be one (not a ``best.pt`` copied over it) and to have
    been trained with ``config`` (bar :func:`resumable_keys`), whatever ``config.yaml`` says now;
    else one line saying what is missing or what differs."""
    try:
        state = load_checkpoint(last, needs=RESUME_KEYS)
    except CloudpipeError as err:
        if "has no" not in str(err):
            raise
        raise CloudpipeError(f"{err}: not a last.pt to resume from (best.pt keeps the model only); "
                             "train a new run, or put the run's own last.pt back") from None
    if not 0 <= state["best_epoch"] <= state["epoch"]:
        raise CloudpipeError(f"checkpoint's epoch {state['epoch']} and best_epoch {state['best_epoch']} are not "
                             "0 <= best_epoch <= epoch", path=last)
    _check_unchanged(checkpoint_config(state, last), config, last)
    if (config.ema or config.swa_epochs) and not isinstance(state.get("average"), dict):
        raise CloudpipeError("checkpoint has no average of the weights, which this run keeps", path=last)
    return state


def _record_run(out_dir: Path, config: TrainConfig, data: TrainData, state: RunState, run: Runner) -> None:
    """Write ``config.yaml`` and a new run's ``splits.csv`` (rank 0), once the run can start."""
    run.dist.barrier()  # every rank has checked the folder before rank 0 writes into it
    if run.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not state.recorded:
            write_splits(out_dir, list(data.labels.index), state.splits)
        save_config(config, out_dir / CONFIG_YAML)
        write_text(profile_text(active()), out_dir / PROFILE_YAML)


def write_out_of_fold(out_dir: Path, folds: int, images: list[str]) -> Path | None:
    """Concatenate the folds' ``val_probs.csv`` into ``out_dir/val_probs.csv`` (every training
    image exactly once, in ``train.csv`` order) once all folds have one."""
    parts = [folder / VAL_PROBS_CSV for folder in model_dirs(out_dir, folds)]
    if not all(p.exists() for p in parts):
        return None
    probs = pd.concat([pd.read_csv(p) for p in parts]).set_index("image")
    if sorted(probs.index) != sorted(images):
        raise CloudpipeError("fold validation images do not cover the training images exactly once", path=out_dir)
    path = out_dir / VAL_PROBS_CSV
    write_csv(probs.loc[images].reset_index(), path, float_format="%.6f")
    return path
