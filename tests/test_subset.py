"""cloudpipe subset: part of a data folder as a Kaggle-layout folder of copies, the chosen images'
rows as they were."""

from __future__ import annotations

import pandas as pd

from cloudpipe.data.kaggle import list_test_images, read_train
from tests.conftest import cli
from tests.test_cli import assert_one_line_error


def rows(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def image_of(labels: pd.Series) -> pd.Series:
    return labels.str.rsplit("_", n=1).str[0]


def test_subset_keeps_the_layout_and_the_rows(tiny_data, tmp_path):
    out = tmp_path / "part"
    result = cli("subset", "--data", tiny_data, "--out", out, "--train", 10, "--test", 3, "--seed", 4)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote 10 of 24 train and 3 of 6 test images (copies, Kaggle layout) to {out}"
    for csv, folder, count in (("train.csv", "train_images", 10), ("sample_submission.csv", "test_images", 3),
                               ("test_truth.csv", "test_images", 3)):
        whole, part = rows(tiny_data / csv), rows(out / csv)
        kept = image_of(part["Image_Label"])
        assert kept.nunique() == count and len(part) == 4 * count
        # The rows as they were, in their order.
        expected = whole[image_of(whole["Image_Label"]).isin(set(kept))].reset_index(drop=True)
        pd.testing.assert_frame_equal(part, expected)
        files = sorted((out / folder).iterdir())
        assert [f.name for f in files] == sorted(set(kept))
        for f in files:  # copies, byte for byte, never links
            assert not f.is_symlink() and f.read_bytes() == (tiny_data / folder / f.name).read_bytes()
    assert set(image_of(rows(out / "test_truth.csv")["Image_Label"])) == set(list_test_images(out))
    assert len(read_train(out)) == 40  # every command reads it as a data folder
    again = cli("subset", "--data", tiny_data, "--out", tmp_path / "again", "--train", 10, "--test", 3, "--seed", 4)
    assert again.exit_code == 0 and (tmp_path / "again" / "train.csv").read_bytes() == (out / "train.csv").read_bytes()
    other = cli("subset", "--data", tiny_data, "--out", tmp_path / "other", "--train", 10, "--test", 3, "--seed", 5)
    assert other.exit_code == 0 and (tmp_path / "other" / "train.csv").read_bytes() != (out / "train.csv").read_bytes()


def test_overwrite_replaces_only_a_subset(tiny_data, tmp_path):
    out = tmp_path / "part"
    assert cli("subset", "--data", tiny_data, "--out", out, "--train", 4, "--test", 2).exit_code == 0
    before = (out / "train.csv").read_bytes()
    assert_one_line_error(cli("subset", "--data", tiny_data, "--out", out, "--train", 6, "--test", 2), "--overwrite")
    assert (out / "train.csv").read_bytes() == before
    result = cli("subset", "--data", tiny_data, "--out", out, "--train", 6, "--test", 2, "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(list((out / "train_images").iterdir())) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part"]  # no staging or old folder left beside it
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert_one_line_error(cli("subset", "--data", tiny_data, "--out", mine, "--train", 4, "--test", 2, "--overwrite"),
                          "was not made by cloudpipe subset")
    assert (mine / "notes.txt").read_text() == "keep"


def test_bad_requests_are_one_line_and_write_nothing(tiny_data, tmp_path):
    out = tmp_path / "part"
    for args, message in ((["--train", 25, "--test", 2], "--train 25: choose between 2 and the 24 images"),
                          (["--train", 4, "--test", 7], "--test 7: choose between 1 and the 6 images")):
        assert_one_line_error(cli("subset", "--data", tiny_data, "--out", out, *args), message)
        assert not out.exists()
    assert_one_line_error(cli("subset", "--data", tiny_data, "--out", tiny_data / "part", "--train", 4, "--test", 2),
                          "must lie outside the data folder")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert_one_line_error(cli("subset", "--data", tiny_data, "--out", link, "--train", 4, "--test", 2), "symbolic link, which cloudpipe never follows")
    assert not (tmp_path / "elsewhere").exists()
    assert cli("subset", "--data", tiny_data, "--out", out, "--train", 1, "--test", 1).exit_code == 2  # click's range


def test_a_steel_folder_is_subset_by_image_in_its_own_layout(tmp_path):
    """Severstal's train.csv lists only images with a defect, its sample one row per image (class 0):
    rows are chosen by image, as they were, and the images without rows come along too."""
    from cloudpipe.core.profile import packaged, use_profile
    from cloudpipe.data.kaggle import read_mask_csv
    from cloudpipe.data.synth import make_dataset
    from cloudpipe.pipeline.subset import subset_data

    steel = packaged("steel").model_copy(update={"image_size": (32, 200), "submission_size": (16, 100)})
    data, out = tmp_path / "steel", tmp_path / "part"
    with use_profile(steel):
        make_dataset(data, train=12, test=4, seed=3, progress=False)  # 2 of its train images have no mask
        test_names = sorted(p.name for p in (data / "test_images").iterdir())
        (data / "sample_submission.csv").write_text("ImageId,EncodedPixels,ClassId\n" + "".join(f"{n},1 409600,0\n" for n in test_names))
        summary = subset_data(data, out, train=11, test=2, seed=1)
        part_train = read_train(out)
        truth = read_mask_csv(out / "test_truth.csv")
    assert (summary.train, summary.test, summary.train_of, summary.test_of) == (11, 2, 12, 4)
    kept = sorted(p.name for p in (out / "train_images").iterdir())
    assert len(kept) == 11 and list(part_train["image"].unique()) == kept
    whole = rows(data / "train.csv")
    pd.testing.assert_frame_equal(rows(out / "train.csv"), whole[whole["ImageId"].isin(kept)].reset_index(drop=True))
    assert not set(kept) <= set(whole["ImageId"])  # some chosen image has no row: not vacuous
    sample = rows(out / "sample_submission.csv")
    assert list(sample.columns) == ["ImageId", "EncodedPixels", "ClassId"] and len(sample) == 2
    assert sorted(sample["ImageId"]) == sorted(p.name for p in (out / "test_images").iterdir())
    assert sorted(truth["image"].unique()) == sorted(sample["ImageId"]) and len(truth) == 8
    assert (out / "profile.yaml").read_bytes() == (data / "profile.yaml").read_bytes()
