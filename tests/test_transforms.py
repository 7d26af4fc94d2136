"""Training augmentations: what the seed used, reproducible, masks following the image."""

from __future__ import annotations

import re

import albumentations as A
import numpy as np
import pytest

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.transforms import NOISE_STD_RANGE, PRESETS, GaussNoise, check_augment, train_transform


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


def _aligned_sample(size=(64, 96)):
    """An image whose red channel is the first mask, drawn as a blocky pattern."""
    rng = np.random.default_rng(3)
    mask = np.zeros((*size, 4), np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, size[0] - 16), rng.integers(0, size[1] - 24)
        mask[y:y + 16, x:x + 24, 0] = 1
    image = np.zeros((*size, 3), np.uint8)
    image[..., 0] = mask[..., 0] * 255
    return image, mask


@pytest.mark.parametrize("preset", ["light", "medium", "heavy"])
def test_presets_keep_the_size_and_move_masks_with_the_image(preset):
    image, mask = _aligned_sample()
    # Only the spatial steps, always on: the mask must land where the image's red block does.
    spatial = [dict(step, p=1.0) for step in PRESETS[preset] if step["name"] in ("Affine", "GridDistortion", "RandomResizedCrop")]
    pipeline = train_transform(hflip=1, vflip=1, brightness_contrast=0, noise=0, seed=5, augment=spatial, size=(64, 96))
    out = pipeline(image=image, mask=mask)
    assert out["image"].shape == image.shape and out["mask"].shape == mask.shape and out["image"].dtype == np.uint8
    assert not (out["mask"] == mask).all()  # it moved
    agree = ((out["image"][..., 0] > 127) == (out["mask"][..., 0] > 0)).mean()
    assert agree > 0.97  # the image interpolates linearly, masks nearest: only edges may differ
    full = train_transform(hflip=0.5, vflip=0.5, brightness_contrast=0.5, noise=0.5, seed=5, augment=preset, size=(64, 96))
    assert len(full.transforms) == 4 + len(PRESETS[preset])  # the basic steps, then the preset's
    check_augment(preset, (64, 96))


def test_basic_is_the_seeds_pipeline():
    image, mask = _aligned_sample()
    settings = dict(hflip=0.5, vflip=0.5, brightness_contrast=0.5, noise=0.5, seed=7)
    default, basic = train_transform(**settings), train_transform(**settings, augment="basic", size=(64, 96))
    for seed in range(5):
        default.set_random_seed(seed), basic.set_random_seed(seed)
        assert (default(image=image, mask=mask)["image"] == basic(image=image, mask=mask)["image"]).all()


def test_a_list_names_the_whole_pipeline_and_is_reproducible():
    steps = [{"name": "GridDistortion", "p": 1.0}, {"name": "ChannelShuffle", "p": 1.0}, {"name": "GaussNoise", "p": 1.0}]
    image, mask = _aligned_sample()
    a = train_transform(hflip=1, vflip=1, brightness_contrast=1, noise=1, seed=1, augment=steps)
    b = train_transform(hflip=1, vflip=1, brightness_contrast=1, noise=1, seed=1, augment=steps)
    assert [type(t).__name__ for t in a.transforms] == ["GridDistortion", "ChannelShuffle", "GaussNoise"]
    assert isinstance(a.transforms[2], GaussNoise)  # this module's faster noise, same distribution
    assert (a(image=image, mask=mask)["image"] == b(image=image, mask=mask)["image"]).all()


@pytest.mark.parametrize("augment, message", [
    ("huge", "config: augment: must be a preset (basic, light, medium, heavy) or a list of transforms, got 'huge'"),
    ([{"name": "GridDistorsion"}], "augment[0]: unknown transform 'GridDistorsion'; did you mean GridDistortion"),
    ([{"name": "HorizontalFlip"}, {"name": "Afine", "p": 1}], "augment[1]: unknown transform 'Afine'; did you mean Affine"),
    ([{"name": "Compose"}], "unknown transform 'Compose'"),
    ([{"name": "Affine", "rotat": 10}], "augment[0]: Affine(rotat=10) refused: Argument(s) 'rotat' are not valid"),
    ([{"name": "GridDistortion", "num_steps": -2}], "GridDistortion(num_steps=-2) refused: num_steps; Input should be greater"),
    (["HorizontalFlip"], "augment[0]: must be a mapping with a transform name, e.g. {name: GridDistortion, p: 0.3}, got 'HorizontalFlip'"),
    ([{"name": "Normalize"}], "must keep images uint8 at image_size [64, 96]"),
    ([{"name": "Resize", "height": 32, "width": 32}], "it gives an image uint8 [32, 32, 3]"),
])
def test_bad_pipelines_are_refused_in_one_line(augment, message):
    with pytest.raises(CloudpipeError) as err:
        check_augment(augment, (64, 96))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["HistogramMatching", "FDA", "PixelDistributionAdaptation", "Mosaic", "OverlayElements",
                                  "RandomCropNearBBox"])
@pytest.mark.parametrize("masks", [True, False])
def test_steps_that_read_data_beside_the_image_are_refused(name, masks):
    """Reference images, other samples, boxes: training gives a step the image (and its masks)
    alone, so these would fail whenever they are drawn (at p=0.5: somewhere in epoch 1)."""
    with pytest.raises(CloudpipeError) as err:
        check_augment([{"name": "HorizontalFlip"}, {"name": name, "p": 0.5}], (64, 96), masks=masks)
    message = str(err.value)
    assert message.startswith(f"config: augment[1]: {name} reads ") and "which training does not give" in message
    assert message.endswith("only the image and its masks" if masks else "only the image") and "\n" not in message


def test_a_step_is_run_as_training_gives_it_samples():
    """Masks for segmentation, the image alone for the classifier; a step that fails on them is
    one line (here a crop that wants bounding boxes: a KeyError otherwise)."""
    check_augment([{"name": "MaskDropout", "p": 0.5}], (64, 96), masks=True)
    with pytest.raises(CloudpipeError, match=r"^config: augment\[0\]: MaskDropout reads masks, which the classifier's"):
        check_augment([{"name": "MaskDropout", "p": 0.5}], (64, 96), masks=False)
    with pytest.raises(CloudpipeError, match=re.escape("config: augment[0]: BBoxSafeRandomCrop fails on a 64 x 96 image "
                                                       "and masks: KeyError: 'bboxes'")):
        check_augment([{"name": "BBoxSafeRandomCrop", "p": 0.5}], (64, 96))


@pytest.mark.parametrize("spec, key", [
    ({"name": "PadIfNeeded", "min_height": 100_000, "min_width": 100_000}, "min_height = 100000"),
    ({"name": "Resize", "height": 64, "width": 100_000}, "width = 100000"),
    ({"name": "Pad", "padding": 100_000}, "padding = 100000"),
    ({"name": "RandomResizedCrop", "size": [100_000, 100_000]}, "size = [100000, 100000]"),
    ({"name": "CropAndPad", "px": -100_000}, "px = -100000"),
])
def test_absurd_sizes_are_refused_before_anything_is_allocated(spec, key):
    """A pad, crop or resize to 100000 pixels would allocate tens of gigabytes; refused on its
    parameters (never run), whatever its probability."""
    with pytest.raises(CloudpipeError, match=re.escape(f"config: augment[0]: {spec['name']}: {key} is larger than 6858 pixels")):
        check_augment([{**spec, "p": 0.0}], (64, 96))
