"""Training augmentations: what the seed used, reproducible, masks following the image."""

from __future__ import annotations

import albumentations as A
import numpy as np

from cloudpipe.data.transforms import NOISE_STD_RANGE, GaussNoise, train_transform


def test_gauss_noise_matches_the_albumentations_distribution():
    image = np.full((128, 192, 3), 128, np.uint8)
    ours = A.Compose([GaussNoise(p=1)], seed=0)
    theirs = A.Compose([A.GaussNoise(std_range=NOISE_STD_RANGE, p=1)], seed=0)
    for _ in range(20):
        a = ours(image=image)["image"].astype(float) - 128
        b = theirs(image=image)["image"].astype(float) - 128
        for noise in (a, b):
            assert abs(noise.mean()) < 0.2  # zero mean
            assert NOISE_STD_RANGE[0] * 255 * 0.95 < noise.std() < NOISE_STD_RANGE[1] * 255 * 1.05
            assert np.std([noise[..., k].std() for k in range(3)]) < 0.2  # every channel alike
        assert a.dtype == b.dtype


def test_gauss_noise_saturates_instead_of_wrapping():
    out = A.Compose([GaussNoise(std_range=(0.02, 0.02), p=1)], seed=1)(image=np.full((32, 32, 3), 255, np.uint8))["image"]
    # std 5.1: saturating keeps every value near 255; wrapping would send half of them near 0.
    assert out.dtype == np.uint8 and out.max() == 255 and out.min() > 220


def test_pipeline_is_reproducible_and_moves_masks_with_the_image():
    settings = dict(hflip=1.0, vflip=0.0, brightness_contrast=0.5, noise=1.0, seed=69)
    image = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    mask = np.zeros((16, 24, 4), np.uint8)
    mask[:, :5, 2] = 1
    first, second = train_transform(**settings), train_transform(**settings)
    a, b = first(image=image, mask=mask), second(image=image, mask=mask)
    assert (a["image"] == b["image"]).all()  # same seed, same augmentation
    assert (a["mask"][:, -5:, 2] == 1).all() and a["mask"].sum() == mask.sum()  # flipped with the image
    first.set_random_seed(123)
    assert not (first(image=image, mask=mask)["image"] == a["image"]).all()
