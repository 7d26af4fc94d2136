"""One image through a segmentation run in memory: the same numbers predict-seg writes, no files."""

from __future__ import annotations

import numpy as np
import pytest

import cloudpipe
from cloudpipe.core.competition import CLASSES, SUBMISSION_SHAPE
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.masks import decode_masks
from cloudpipe.data.images import read_image
from cloudpipe.data.kaggle import read_mask_csv, to_wide
from cloudpipe.pipeline.notebook import as_model_input, segment_image
from tests.conftest import CPU_QUIET, cli, copy_run, load


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
    assert sorted(p.name for p in run.rglob("*")) == files  # nothing written


def test_an_array_of_another_size_is_resized_and_a_wrong_one_refused():
    image = np.zeros((70, 105, 3), np.uint8)
    assert as_model_input(image, (32, 64)).shape == (32, 64, 3)
    with pytest.raises(CloudpipeError, match=r"RGB \(H, W, 3\); got shape \(70, 105\)"):
        as_model_input(image[..., 0], (32, 64))

