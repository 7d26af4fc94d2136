"""Profiles on disk: a name or a file, the profile a data folder or a run says, and commands that refuse
to mix runs, stores and data of different profiles, in one line."""

from __future__ import annotations

import shutil

import pytest

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.profile import packaged, use_profile
from cloudpipe.data.kaggle import list_test_images, read_train
from cloudpipe.data.profiles import command_profile, data_profile, load_profile, profile_text, run_profile
from cloudpipe.data.synth import make_dataset
from tests.conftest import CLOUDS, cli, copy_run

STEEL = packaged("steel")


def test_a_profile_is_a_packaged_name_or_a_file_and_a_bad_file_is_one_line(tmp_path):
    assert load_profile("steel") == STEEL
    path = tmp_path / "mine.yaml"
    path.write_text(profile_text(STEEL))
    assert load_profile(path) == STEEL  # profile_text writes what load_profile reads back
    path.write_text(profile_text(STEEL).replace("rle_order: column", "rle_order: spiral"))
    with pytest.raises(CloudpipeError, match=rf"^{path}: profile: rle_order: must be column .* or row, got 'spiral'$"):
        load_profile(path)
    with pytest.raises(CloudpipeError, match=r"^no profile 'stel': give one of clouds, steel, steel-v1 or a profile YAML file$"):
        load_profile("stel")


def test_a_data_folder_says_its_profile_and_a_differing_option_is_refused(tmp_path):
    assert data_profile(tmp_path) == CLOUDS and data_profile(tmp_path, "steel") == STEEL
    (tmp_path / "profile.yaml").write_text(profile_text(STEEL))
    assert data_profile(tmp_path) == data_profile(tmp_path, "steel") == STEEL
    with pytest.raises(CloudpipeError, match="says profile 'steel'; --profile 'clouds' differs"):
        data_profile(tmp_path, "clouds")


def test_a_run_records_its_profile_and_an_older_run_without_one_is_clouds(tiny_classifier_run, tmp_path):
    assert load_profile(tiny_classifier_run / "profile.yaml") == CLOUDS == run_profile(tiny_classifier_run)
    old = copy_run(tiny_classifier_run, tmp_path, "old")
    (old / "profile.yaml").unlink()
    assert run_profile(old) == CLOUDS
    assert command_profile(runs=[old]) == CLOUDS


def steel_run(run, tmp_path):
    """A copy of a clouds run that says it trained on steel."""
    copy = copy_run(run, tmp_path, "steel_run")
    (copy / "profile.yaml").write_text(profile_text(STEEL))
    return copy


def test_commands_refuse_a_run_of_another_profile_in_one_line(tiny_classifier_run, tiny_data, tmp_path):
    run = steel_run(tiny_classifier_run, tmp_path)
    seg = tiny_data / "sample_submission.csv"
    for args in (["predict", "--seg", seg, "--run", run, "--data", tiny_data, "--out", tmp_path / "s.csv"],
                 ["tune-threshold", "--run", run, "--data", tiny_data, "--out", tmp_path / "t.json"],
                 ["train-classifier", "--data", tiny_data, "--out", run, "--resume", "--arch", "tiny", "--weights", "none"]):
        result = cli(*args)
        assert result.exit_code == 2 and result.stdout == "", (args, result.output)
        line, = result.stderr.splitlines()
        assert f"run {run} is of profile steel (1, 2, 3, 4; 256x1600 images), the data of clouds" in line, line
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "t.json").exists()
    # the data folder says nothing: --profile steel makes it steel data, and then the clouds run is refused
    result = cli("predict", "--seg", seg, "--run", tiny_classifier_run, "--data", tiny_data, "--profile", "steel")
    assert result.exit_code == 2 and f"run {tiny_classifier_run} is of profile clouds" in result.stderr


def test_a_data_folder_that_says_steel_is_not_read_as_clouds(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "profile.yaml").write_text(profile_text(STEEL))
    result = cli("predict", "--seg", data / "sample_submission.csv", "--run", tmp_path, "--data", data, "--profile", "clouds")
    assert result.exit_code == 2 and "says profile 'steel'; --profile 'clouds' differs" in result.stderr


def test_the_library_refuses_a_data_folder_of_another_profile_than_the_active_one(tmp_path):
    """A notebook reading steel data under the default profile is told how to make it active, in one line."""
    with use_profile(STEEL):
        make_dataset(tmp_path / "data", train=4, test=1, shape=(32, 200), seed=1, progress=False)
        assert len(read_train(tmp_path / "data")) == 16  # 4 images x 4 classes
    for read in (read_train, list_test_images):
        with pytest.raises(CloudpipeError, match=r"says profile 'steel', not the active 'clouds': read it under its own "
                                                 r"\(cloudpipe.set_profile\(cloudpipe.load_profile\("):
            read(tmp_path / "data")
