"""One image through a segmentation run in memory: the same numbers predict-seg writes, no files."""

from __future__ import annotations

import numpy as np
import pytest

import cloudpipe
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.masks import decode_masks
from cloudpipe.core.profile import use_profile
from cloudpipe.data.images import read_image
from cloudpipe.data.kaggle import read_mask_csv, to_wide
from cloudpipe.data.synth import make_dataset
from cloudpipe.pipeline.notebook import as_model_input, segment_image
from tests.conftest import CLASSES, CLOUDS, CPU_QUIET, SUBMISSION_SHAPE, cli, copy_run, load, train_tiny


def test_one_image_in_memory_is_what_predict_seg_stores_and_draws(seg_run, tiny_data, tmp_path):
    run = copy_run(seg_run, tmp_path, "seg")
    (run / "seg_postprocess.json").unlink(missing_ok=True)  # the session's run is tuned by whichever test ran first
    untuned = segment_image(run, tiny_data / "test_images" / sorted((tiny_data / "test_images").iterdir())[0].name)
    assert not untuned.tuned and untuned.masks.shape == (4, *SUBMISSION_SHAPE) and untuned.probs.dtype == np.float32
    for split in ("val", "test"):
        assert cli("predict-seg", "--run", run, "--data", tiny_data, "--split", split, "--overwrite", *CPU_QUIET).exit_code == 0
    files = sorted(p.name for p in run.rglob("*"))
    store, info = load(run / "test_seg_probs.npy")
    drawn = to_wide(read_mask_csv(run / "test_seg.csv", shape=SUBMISSION_SHAPE))
    for row, name in enumerate(info.images[:2]):
        path = tiny_data / "test_images" / name
        result = cloudpipe.segment_image(run, path)
        assert result.tuned
        assert np.array_equal(np.round(result.probs * 255).astype(np.uint8), store[row])
        assert np.array_equal(result.masks, decode_masks(drawn.loc[name, list(CLASSES)], SUBMISSION_SHAPE, SUBMISSION_SHAPE))
        as_array = read_image(path, (32, 64), 1)  # an array at the model's size goes in as it is
        assert np.array_equal(segment_image(run, as_array).masks, result.masks)
        bgr = np.ascontiguousarray(as_array[..., ::-1])  # as cv2.imread reads it, then flipped to RGB without a copy
        assert np.array_equal(segment_image(run, bgr[..., ::-1]).masks, result.masks)
    assert sorted(p.name for p in run.rglob("*")) == files  # nothing written


def test_an_array_of_another_size_is_resized_and_a_wrong_one_refused():
    image = np.zeros((70, 105, 3), np.uint8)
    assert as_model_input(image, (32, 64)).shape == (32, 64, 3)
    with pytest.raises(CloudpipeError, match=r"RGB \(H, W, 3\); got shape \(70, 105\)"):
        as_model_input(image[..., 0], (32, 64))


def huge() -> np.ndarray:
    """A 60000 x 60000 RGB array that takes no memory (every pixel is the same three bytes)."""
    return np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), shape=(60000, 60000, 3), strides=(0, 0, 1))


@pytest.mark.parametrize("image, error, message", [
    (np.full((64, 96, 3), 0.5, np.float32), TypeError, r"image must be uint8 .*float32.*\(image \* 255\)\.round\(\)"),
    (np.full((64, 96, 3), np.nan), ValueError, r"image holds nan at index \(0, 0, 0\)"),
    (np.full((64, 96, 3), 300, np.int64), ValueError, r"image holds 300 .* outside \[0, 255\]"),
    (np.full((64, 96, 3), 200, np.int64), TypeError, r"image must be uint8 .*int64.*image\.astype\(np\.uint8\)"),
    (np.zeros((0, 0, 3), np.uint8), ValueError, r"image is empty \(0 x 0\)"),
    (huge(), ValueError, r"image is 60000 x 60000, more than 47,040,000 pixels"),
])
def test_an_image_array_it_cannot_read_is_refused_naming_it(seg_run, image, error, message):
    """A float image in [0, 1] once gave a black image's masks, NaN probabilities, int64 300 wrapped to 44."""
    with pytest.raises(error, match=message):
        segment_image(seg_run, image)


def test_a_jpeg_and_its_full_size_decode_give_the_same_model_input_and_masks(seg_run, tmp_path):
    """The array goes through the path's steps (the decoder's 4x reduction, then bilinear), not
    one bilinear resize from full size, which samples 4 of every 16 pixels."""
    import cv2
    import simplejpeg

    from cloudpipe.data.synth import make_image

    image, _ = make_image(np.random.default_rng(5), (256, 384))  # 4x the run's 32 x 64 (and more): reduced 4x
    path = tmp_path / "big.jpg"
    path.write_bytes(simplejpeg.encode_jpeg(image, quality=90, colorspace="RGB"))
    decoded = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)  # as a notebook reads it
    from_path, from_array = as_model_input(path, (32, 64)), as_model_input(decoded, (32, 64))
    assert np.abs(from_path.astype(int) - from_array).mean() < 0.5
    by_path, by_array = segment_image(seg_run, path), segment_image(seg_run, decoded)
    assert np.abs(by_path.probs - by_array.probs).max() <= 2 / 255
    assert (by_path.masks != by_array.masks).mean() < 0.001



def test_segment_image_follows_the_runs_profile(tmp_path):
    """A run of a two-class profile segments into two masks at its submission size, whatever profile is
    active where segment_image is called."""
    two = CLOUDS.model_copy(update={"name": "two", "classes": ("water", "land"), "submission_size": (40, 60)})
    with use_profile(two):
        make_dataset(tmp_path / "data", train=8, test=2, shape=(48, 72), seed=1, progress=False)
        train_tiny(tmp_path / "data", tmp_path / "run", "segmentation")
    image = segment_image(tmp_path / "run", sorted((tmp_path / "data" / "test_images").iterdir())[0])
    assert image.classes == ("water", "land") and image.probs.shape == image.masks.shape == (2, 40, 60)
