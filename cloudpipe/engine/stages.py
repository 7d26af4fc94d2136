"""A stage object per kind of training: what differs between the presence classifier and the
segmentation model, so the training loop and inference never ask which one they run.

Each stage knows its targets (labels or masks), its network, its loss, what validation keeps
per image, the metric and the name of its score, and what it leaves in the run folder besides
the checkpoints. :func:`stage_for` picks the stage of a config. What a stage writes to
``metrics.csv`` (:attr:`Stage.metric_columns`) and which column picks ``best.pt``
(:func:`score_name`) are read without torch, so ``cloudpipe runs`` starts fast: torch, the
networks and the augmentations are imported where a stage trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.metric import accuracy, dice_score, roc_auc
from cloudpipe.core.profile import active
from cloudpipe.engine.config import REGION_LOSSES, Task, TrainConfig

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Metric:
    """A validation metric as ``metrics.csv`` holds it: its mean over the classes in ``column``
    and, with a ``class_prefix``, each class's in ``<class_prefix><class>``."""

    name: str
    column: str
    class_prefix: str | None = None

    def class_columns(self) -> dict[str, str]:
        """Class -> its column (none without a ``class_prefix``)."""
        return {} if self.class_prefix is None else {c: f"{self.class_prefix}{c}" for c in active().classes}

    def values(self, mean: float, per_class: np.ndarray | None = None) -> dict[str, float]:
        """The metric's columns of one epoch: the mean, then each class's (4,)."""
        classes = {} if per_class is None else dict(zip(self.class_columns().values(), map(float, per_class)))
        return {self.column: float(mean), **classes}


class Stage:
    """The interface; subclasses are registered in :data:`STAGES` by their ``task``."""

    task: ClassVar[Task]
    metric_columns: ClassVar[tuple[Metric, ...]]
    """What validation writes to ``metrics.csv`` (a metric of a model with a head alone included)."""
    scores: ClassVar[dict[str, str]]
    """``best_by`` -> the column of ``metrics.csv`` whose maximum picks ``best.pt``."""
    unused_settings: ClassVar[tuple[str, ...]]
    """Config keys this stage never reads (another stage's), though its ``config.yaml`` holds them."""
    needs_masks: ClassVar[bool]
    """Whether targets are masks (decoded from RLE) rather than presence labels."""
    keeps_val_probs: ClassVar[bool] = False
    """Whether :meth:`best_outputs` gives a ``val_probs.csv`` table (made out-of-fold with folds)."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.score_name = self.scores[config.best_by]

    def in_encoder(self, name: str) -> bool:
        """Whether parameter ``name`` (of :meth:`build_model`'s network) belongs to the encoder,
        which trains at ``lr * encoder_lr_ratio``."""
        raise NotImplementedError

    def build_model(self, weights: str | None = None) -> nn.Module:
        """The network (``weights`` overrides ``config.weights``)."""
        raise NotImplementedError

    def augmentation(self):
        """The training images' albumentations pipeline, the config's ``augment`` (masks follow it)."""
        from cloudpipe.data.transforms import train_transform

        c = self.config
        return train_transform(hflip=c.hflip, vflip=c.vflip, brightness_contrast=c.brightness_contrast, noise=c.noise,
                               seed=c.seed, augment=c.augment, size=tuple(c.image_size))

    def mix(self, batch: dict, generator: torch.Generator) -> dict:
        """A training batch as the loss sees it (``generator``: this epoch's, seeded); as it came here."""
        return batch

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch, computed in float32."""
        raise NotImplementedError

    def outputs(self, logits: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        """What validation keeps per image of a batch (numpy, first axis the batch)."""
        raise NotImplementedError

    def per_class(self, outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The validation metric per class (4,) from every validation image's outputs."""
        raise NotImplementedError

    def metrics(self, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """The first of :attr:`metric_columns`: its value per class and their mean."""
        per_class = self.per_class(outputs, labels)
        return self.metric_columns[0].values(per_class.mean(), per_class)

    def best_outputs(self, outputs: np.ndarray, images: list[str]) -> pd.DataFrame | None:
        """A table written as ``val_probs.csv`` beside ``best.pt``, or None."""
        return None


class ClassifierStage(Stage):
    """Presence per class: BCE on 0/1 labels, accuracy at 0.5 and ROC AUC per class (``val_<class>``,
    ``auc_<class>``; their means ``val_accuracy`` and ``val_auc``), validation probabilities kept.
    ``best_by: auc`` makes ``val_auc`` the score that picks ``best.pt``."""

    task = "classifier"
    metric_columns = (Metric("accuracy", "val_accuracy", "val_"), Metric("auc", "val_auc", "auc_"))
    scores = {"score": metric_columns[0].column, "auc": metric_columns[1].column}
    unused_settings = ("encoder", "mask_loss_on", "cutmix", "head_weight", "head_dropout")
    needs_masks = False
    keeps_val_probs = True

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.terms = pixel_losses(config.loss)
        self.head = "fc"
        """The replaced last linear layer (a ResNet's ``fc``), known once :meth:`build_model` ran."""

    def in_encoder(self, name: str) -> bool:
        """The backbone: everything but the replaced head."""
        return not name.startswith(f"body.{self.head}.")

    def build_model(self, weights: str | None = None) -> nn.Module:
        from cloudpipe.models.networks import build_classifier

        c = self.config
        model = build_classifier(c.arch, c.weights if weights is None else weights, c.freeze)
        self.head = model.head
        return model

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        return sum(weight * term(logits, target) for term, weight in self.terms)

    def outputs(self, logits: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        """Probabilities (B, 4)."""
        import torch

        return torch.sigmoid(logits.float()).cpu().numpy()

    def per_class(self, outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return accuracy(outputs, labels)

    def metrics(self, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Accuracy at 0.5 per class and its mean ``val_accuracy``; ROC AUC per class (NaN where
        the validation images hold one label only) and ``val_auc``, its mean over the classes
        that have one (0.5, chance, when none has)."""
        correct, auc = self.per_class(outputs, labels), roc_auc(outputs, labels)
        by_accuracy, by_auc = self.metric_columns
        return {**by_accuracy.values(correct.mean(), correct),
                **by_auc.values(np.nanmean(auc) if np.isfinite(auc).any() else 0.5, auc)}

    def best_outputs(self, outputs: np.ndarray, images: list[str]) -> pd.DataFrame:
        return pd.DataFrame(outputs, columns=list(active().classes)).assign(image=images)[["image", *active().classes]]


def pixel_losses(weights: dict[str, float]) -> list[tuple[nn.Module, float]]:
    """smp's losses applied to every element (``bce``, ``focal``) with their weights; the
    weights of other (region) terms are left to the caller."""
    from segmentation_models_pytorch.losses import FocalLoss, SoftBCEWithLogitsLoss

    made = {"bce": SoftBCEWithLogitsLoss, "focal": lambda: FocalLoss(mode="multilabel")}
    return [(made[name](), w) for name, w in weights.items() if name in made and w > 0]


class SegmentationStage(Stage):
    """Masks per class: the weighted sum of ``config.loss``'s terms (default BCE + smp's
    multilabel soft Dice), restricted as ``mask_loss_on`` says (:data:`~cloudpipe.engine.config.MASK_LOSS_ON`),
    Kaggle Dice at 0.5 per pair. ``dice`` is smp's multilabel soft Dice over the batch per class
    (per pair when restricted); ``lovasz`` the Lovasz hinge per pair. With ``head_weight > 0``
    the model also has a classification head (presence per class, the target being "the mask
    is not empty"), trained with ``head_weight`` * BCE; validation then also reports the head's
    accuracy at 0.5 (``val_head_accuracy``)."""

    task = "segmentation"
    metric_columns = (Metric("dice", "val_dice", "val_"), Metric("head_accuracy", "val_head_accuracy"))
    scores = {"score": metric_columns[0].column}
    unused_settings = ("best_by",)
    needs_masks = True

    def __init__(self, config: TrainConfig):
        from segmentation_models_pytorch.losses import DiceLoss, LovaszLoss

        super().__init__(config)
        self.terms = pixel_losses(config.loss)
        self.dice_loss = DiceLoss(mode="multilabel", from_logits=True)
        self.lovasz_loss = LovaszLoss(mode="binary", per_image=True)

    def in_encoder(self, name: str) -> bool:
        """smp's ``encoder`` (the tiny stand-in names its own alike)."""
        return name.startswith("body.encoder.")

    @staticmethod
    def present_pairs(masks: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The (image, class) pairs whose mask is not empty, each a channel of one "image"
        (1, N, H, W), so that smp's Dice scores pair by pair; None when there is none."""
        present = target.amax((2, 3)) > 0
        if not present.any():
            return None
        return masks[present].unsqueeze(0), target[present].unsqueeze(0)

    def region_loss(self, masks: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted Dice and Lovasz terms of float logits and targets (B, 4, H, W)."""
        weights = {k: w for k, w in self.config.loss.items() if k in REGION_LOSSES and w > 0}
        loss = masks.new_zeros(())
        if not weights:
            return loss
        pairs, truth = masks, target
        if self.config.mask_loss_on != "all":
            present = self.present_pairs(masks, target)
            if present is None:
                return loss + 0 * masks.sum()  # keeps the graph whole (DDP, AMP) when no mask is present
            pairs, truth = present
        if "dice" in weights:
            loss = loss + weights["dice"] * self.dice_loss(pairs, truth)
        if "lovasz" in weights:
            loss = loss + weights["lovasz"] * self.lovasz_loss(pairs.flatten(0, 1), truth.flatten(0, 1))
        return loss

    def mix(self, batch: dict, generator: torch.Generator) -> dict:
        """CutMix with probability ``cutmix``: one box, its area a uniform share of the image,
        cut from each image's partner (a random permutation of the batch) with its masks."""
        import torch

        if not self.config.cutmix or len(batch["image"]) < 2 or torch.rand((), generator=generator) >= self.config.cutmix:
            return batch
        images, target = batch["image"], batch["target"]  # (B, H, W, 3) uint8, (B, 4, H, W)
        h, w = images.shape[1:3]
        side = math.sqrt(torch.rand((), generator=generator).item())
        bh, bw = int(h * side), int(w * side)
        y = int(torch.randint(h - bh + 1, (), generator=generator))
        x = int(torch.randint(w - bw + 1, (), generator=generator))
        partner = torch.randperm(len(images), generator=generator)
        images, target = images.clone(), target.clone()
        images[:, y:y + bh, x:x + bw] = batch["image"][partner, y:y + bh, x:x + bw]
        target[:, :, y:y + bh, x:x + bw] = batch["target"][partner, :, y:y + bh, x:x + bw]
        return {**batch, "image": images, "target": target}

    def build_model(self, weights: str | None = None) -> nn.Module:
        from cloudpipe.models.networks import build_segmenter

        c = self.config
        return build_segmenter(c.arch, c.encoder, c.weights if weights is None else weights, c.freeze,
                               head_dropout=c.head_dropout if c.head_weight > 0 else None)

    def loss(self, logits: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        masks, labels = logits if isinstance(logits, tuple) else (logits, None)
        masks, target = masks.float(), target.float()
        loss = self.region_loss(masks, target)
        pairs = self.present_pairs(masks, target) if self.config.mask_loss_on == "positive" else (masks, target)
        if pairs is None:
            loss = loss + 0 * masks.sum()  # no mask present: the graph stays whole (DDP, AMP)
        else:
            loss = loss + sum(weight * term(*pairs) for term, weight in self.terms)
        if labels is not None:
            from torch.nn.functional import binary_cross_entropy_with_logits

            present = (target.amax((2, 3)) > 0).float()
            loss = loss + self.config.head_weight * binary_cross_entropy_with_logits(labels.float(), present)
        return loss

    def outputs(self, logits: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> np.ndarray:
        """Pair statistics (B, 4, 3): intersection, predicted area, true area at 0.5; with a
        head (B, 4, 4), the head's presence probability last."""
        import torch

        masks, labels = logits if isinstance(logits, tuple) else (logits, None)
        pred, truth = masks.float() > 0, target > 0
        columns = [(pred & truth).sum((2, 3)), pred.sum((2, 3)), truth.sum((2, 3))]
        if labels is not None:
            columns = [c.double() for c in columns] + [torch.sigmoid(labels.double())]
        return torch.stack(columns, dim=-1).detach().cpu().numpy()

    def per_class(self, outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return dice_score(outputs[..., 0], outputs[..., 1], outputs[..., 2]).mean(axis=0)

    def metrics(self, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        metrics = super().metrics(outputs, labels)
        if outputs.shape[-1] == 4:
            metrics |= self.metric_columns[1].values(accuracy(outputs[..., 3], outputs[..., 2] > 0).mean())
        return metrics


STAGES: dict[str, type[Stage]] = {s.task: s for s in (ClassifierStage, SegmentationStage)}


def score_name(task: object, best_by: object = "score") -> str | None:
    """The column of ``metrics.csv`` whose maximum picks ``best.pt`` in a run of ``task``
    trained with ``best_by`` (raw values, as a run's ``config.yaml`` holds them); None when
    they name no stage or no score of it."""
    stage = STAGES.get(task) if isinstance(task, str) else None
    return stage.scores.get(best_by) if stage is not None and isinstance(best_by, str) else None


def stage_for(config: TrainConfig) -> Stage:
    """The stage object of a config's ``task``."""
    if config.task not in STAGES:
        raise CloudpipeError(f"config: task {config.task!r} is not one of {', '.join(STAGES)}")
    return STAGES[config.task](config)
