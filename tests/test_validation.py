"""A run's validation images come from the split its training recorded."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.runfolder import read_splits
from cloudpipe.pipeline.validation import validation_sets


def test_validation_sets_follow_splits_csv(tiny_data, tiny_classifier_run, tmp_path):
    data, [split] = validation_sets(tiny_classifier_run, tiny_data, "classifier")
    assert split == read_splits(tiny_classifier_run, 0)[0] and split.folder == tiny_classifier_run
    assert set(split.val) <= set(data.labels.index) and not set(split.val) & set(split.train)
    # The recorded split wins over what the split code would compute today.
    run = tmp_path / "run"
    shutil.copytree(tiny_classifier_run, run)
    splits = pd.read_csv(run / "splits.csv", dtype=str, keep_default_na=False)
    splits["fold"] = ["0" if i < 3 else "" for i in range(len(splits))]
    splits.to_csv(run / "splits.csv", index=False)
    _, [moved] = validation_sets(run, tiny_data, "classifier")
    assert moved.val == list(splits["image"][:3])


def test_images_the_data_lacks_and_the_other_stage(tiny_data, tiny_classifier_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_classifier_run, run)
    with (run / "splits.csv").open("a") as f:
        f.write("stranger.jpg,0\n")
    with pytest.raises(CloudpipeError, match=r"splits.csv: .*train.csv lacks 1 image\(s\) of the run's validation \(e.g. stranger.jpg\): another data folder"):
        validation_sets(run, tiny_data, "classifier")
    with pytest.raises(CloudpipeError, match="this command needs a segmentation run"):
        validation_sets(tiny_classifier_run, tiny_data, "segmentation")
