"""Albumentations (2.x) pipelines. Images stay uint8 HWC; normalisation happens on the device
(see :class:`cloudpipe.models.Normalized`), so batches cross to the GPU as bytes."""

from __future__ import annotations

import albumentations as A

from cloudpipe.config import TrainConfig


def train_transform(config: TrainConfig) -> A.Compose:
    """The seed's augmentations: flips, brightness/contrast, Gaussian noise (masks follow flips)."""
    return A.Compose(
        [
            A.HorizontalFlip(p=config.hflip),
            A.VerticalFlip(p=config.vflip),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=config.brightness_contrast),
            A.GaussNoise(std_range=(0.012, 0.028), p=config.noise),
        ],
        seed=config.seed,
    )
