"""Albumentations (2.x) pipelines. Images stay uint8 HWC; normalisation happens on the device
(see :class:`cloudpipe.models.networks.Normalized`), so batches cross to the GPU as bytes."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

NOISE_STD_RANGE = (0.012, 0.028)  # the seed's GaussNoise var_limit (10, 50), as a fraction of 255


class GaussNoise(A.ImageOnlyTransform):
    """Additive zero-mean Gaussian noise per pixel and channel, std drawn uniformly from
    ``std_range`` x 255: the distribution of ``A.GaussNoise(std_range=...)``, generated in
    float32 by OpenCV instead of albumentations' float64 path (a third of a training sample's
    CPU time; the figures are in benchmarks/README.md). Seeded from the pipeline's generator,
    so augmentation stays reproducible."""

    def __init__(self, std_range: tuple[float, float] = NOISE_STD_RANGE, p: float = 0.5):
        super().__init__(p=p)
        self.std_range = tuple(std_range)

    def get_params(self) -> dict:
        return {"std": self.py_random.uniform(*self.std_range) * 255, "seed": int(self.random_generator.integers(2**31 - 1))}

    def apply(self, img: np.ndarray, std: float, seed: int, **params) -> np.ndarray:
        noise = np.empty(img.shape, np.float32)
        cv2.setRNGSeed(seed)
        cv2.randn(noise.reshape(-1), 0.0, std)
        return cv2.add(img, noise, dtype=cv2.CV_8U)  # saturating


def train_transform(*, hflip: float, vflip: float, brightness_contrast: float, noise: float, seed: int) -> A.Compose:
    """The seed's augmentations: flips, brightness/contrast, Gaussian noise (masks follow flips).

    Args:
        hflip, vflip, brightness_contrast, noise: probability of each augmentation.
        seed: the pipeline's seed (each sample reseeds it, see ``CloudDataset``).
    """
    return A.Compose(
        [
            A.HorizontalFlip(p=hflip),
            A.VerticalFlip(p=vflip),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=brightness_contrast),
            GaussNoise(p=noise),
        ],
        seed=seed,
    )
