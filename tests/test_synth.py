import csv
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.rle import rle2mask
from cloudpipe.data.images import jpeg_size
from cloudpipe.data.kaggle import presence, read_mask_csv, read_train
from cloudpipe.data.synth import SynthSummary, make_dataset
from tests.conftest import CLASSES, SUBMISSION_SHAPE

SHAPE = (48, 72)


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def decoded_masks(csv_path: Path, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """image -> (4, H, W) masks, decoded from the CSV with the csv module (independent of data.py)."""
    out: dict[str, np.ndarray] = {}
    for label, rle in read_rows(csv_path)[1:]:
        image, cls = label.rsplit("_", 1)
        out.setdefault(image, np.zeros((len(CLASSES), *shape), np.uint8))[CLASSES.index(cls)] = rle2mask(rle, shape)
    return out


@pytest.fixture(scope="module")
def forty(tmp_path_factory) -> Path:
    """40 train and 4 test images: enough for variety in classes and no-data bands."""
    out = tmp_path_factory.mktemp("synth40") / "data"
    make_dataset(out, train=40, test=4, shape=SHAPE, seed=5, progress=False)
    return out


def test_layout(tiny_data):
    names = {p.name for p in tiny_data.iterdir()}
    assert names == {"train.csv", "sample_submission.csv", "test_truth.csv", "train_images", "test_images", ".cloudpipe"}
    assert (tiny_data / ".cloudpipe").read_text() == "cloudpipe synth\n"  # what --overwrite may replace
    train_images = sorted(p.name for p in (tiny_data / "train_images").iterdir())
    test_images = sorted(p.name for p in (tiny_data / "test_images").iterdir())
    assert len(train_images) == 24 and len(test_images) == 6
    assert not set(train_images) & set(test_images)
    assert all(re.fullmatch(r"[0-9a-f]{7}\.jpg", n) for n in train_images + test_images)

    train = read_rows(tiny_data / "train.csv")
    assert train[0] == ["Image_Label", "EncodedPixels"]
    assert [r[0] for r in train[1:]] == [f"{n}_{c}" for n in train_images for c in CLASSES]

    sample = read_rows(tiny_data / "sample_submission.csv")
    assert sample[0] == ["Image_Label", "EncodedPixels"]
    assert sample[1:] == [[f"{n}_{c}", "1 1"] for n in test_images for c in CLASSES]

    truth = read_rows(tiny_data / "test_truth.csv")
    assert [r[0] for r in truth[1:]] == [r[0] for r in sample[1:]]


def test_csvs_are_valid_at_their_sizes(tiny_data):
    shape = jpeg_size(next((tiny_data / "train_images").glob("*.jpg")))
    assert shape == (64, 96)
    assert len(read_mask_csv(tiny_data / "train.csv", shape=shape)) == 24 * 4
    assert len(read_mask_csv(tiny_data / "test_truth.csv", shape=SUBMISSION_SHAPE)) == 6 * 4
    assert len(read_mask_csv(tiny_data / "sample_submission.csv", shape=SUBMISSION_SHAPE)) == 6 * 4


def test_image_sizes(tiny_data):
    for path in sorted(tiny_data.rglob("*.jpg")):
        image = cv2.imread(str(path))
        assert image is not None and image.shape == (64, 96, 3), path
        assert jpeg_size(path) == (64, 96)


def test_summary(tmp_path):
    summary = make_dataset(tmp_path / "d", train=3, test=2, shape=(20, 30), seed=0, progress=False)
    assert summary == SynthSummary(tmp_path / "d", 3, 2, (20, 30))
    assert all(jpeg_size(p) == (20, 30) for p in (tmp_path / "d").rglob("*.jpg"))


def test_deterministic(tmp_path):
    kwargs = dict(train=4, test=2, shape=(32, 48), progress=False)
    make_dataset(tmp_path / "a", seed=7, **kwargs)
    make_dataset(tmp_path / "b", seed=7, **kwargs)
    make_dataset(tmp_path / "c", seed=8, **kwargs)
    a, b, c = (all_files(tmp_path / x) for x in "abc")
    assert len(a) == 4 + 2 + 3 + 1  # images, CSVs and the mark
    assert a == b  # byte for byte, CSVs and JPEGs
    assert a["train.csv"] != c["train.csv"]
    assert set(a) != set(c)  # other image names too


def test_labels_match_masks(forty):
    masks = decoded_masks(forty / "train.csv", SHAPE)
    labels = presence(read_train(forty))
    expected = np.array([[int(masks[i][k].any()) for k in range(len(CLASSES))] for i in labels.index])
    np.testing.assert_array_equal(labels.to_numpy(), expected)
    # One class per pixel: a later region hides what was painted below it.
    assert max(int(m.sum(axis=0).max()) for m in masks.values()) == 1


def test_variety(forty):
    counts = presence(read_train(forty)).sum(axis=1)
    assert (counts == 0).any()
    assert (counts >= 2).any()
    assert presence(read_train(forty)).to_numpy().any(axis=0).all()  # every class appears


def _black(image: np.ndarray) -> np.ndarray:
    return (image <= 12).all(axis=2)


def test_no_masks_in_the_no_data_band(forty):
    masks = decoded_masks(forty / "train.csv", SHAPE)
    banded = 0
    for name, m in masks.items():
        black = _black(cv2.imread(str(forty / "train_images" / name)))
        if black.mean() > 0.05:
            banded += 1
        labelled_black = int((m.any(axis=0) & black).sum())
        assert labelled_black <= 5, (name, labelled_black, int(black.sum()))  # a few JPEG-edge pixels
    assert banded >= 5  # about half of the images have a band: the check above is not vacuous


def test_test_truth_matches_test_images(forty):
    truth = decoded_masks(forty / "test_truth.csv", SUBMISSION_SHAPE)
    assert sorted(truth) == sorted(p.name for p in (forty / "test_images").iterdir())
    for name, m in truth.items():
        image = cv2.imread(str(forty / "test_images" / name))
        big = cv2.resize(image, SUBMISSION_SHAPE[::-1], interpolation=cv2.INTER_NEAREST)
        black = _black(big)
        assert int((m.any(axis=0) & black).sum()) <= 50, name  # a few JPEG-edge pixels, upsampled


def test_refuses_non_empty_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(CloudpipeError, match="--overwrite") as info:
        make_dataset(out, train=2, test=1, shape=(16, 16), progress=False)
    assert str(out) in str(info.value)
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    make_dataset(out / "data", train=2, test=1, shape=(16, 16), progress=False)
    (out / "data" / "stale.txt").write_text("from an earlier dataset")
    make_dataset(out / "data", train=3, test=1, shape=(16, 16), overwrite=True, progress=False)
    assert not (out / "data" / "stale.txt").exists()
    assert len(list((out / "data" / "train_images").iterdir())) == 3


def test_empty_existing_folder_is_fine(tmp_path):
    (tmp_path / "out").mkdir()
    make_dataset(tmp_path / "out", train=2, test=1, shape=(16, 16), progress=False)
    assert len(list((tmp_path / "out" / "train_images").iterdir())) == 2


def test_refuses_a_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    for overwrite in (False, True):
        with pytest.raises(CloudpipeError, match="not a folder"):
            make_dataset(target, train=2, test=1, shape=(16, 16), overwrite=overwrite, progress=False)
    assert target.read_text() == "x"


@pytest.mark.parametrize(
    "kwargs",
    [dict(train=1), dict(test=0), dict(shape=(15, 64)), dict(shape=(64, 8)), dict(seed=-1), dict(shape=(100000, 100000))],
)
def test_invalid_arguments(tmp_path, kwargs):
    args = dict(train=2, test=1, shape=(16, 16), seed=0, progress=False) | kwargs
    with pytest.raises(CloudpipeError):
        make_dataset(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_overwrite_never_deletes_a_folder_that_is_not_a_dataset(tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(CloudpipeError, match="refusing to delete"):
        make_dataset(precious, train=2, test=1, shape=(32, 48), overwrite=True, progress=False)
    assert (precious / "thesis.tex").read_text() == "years of work"


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_link_at_out_dir_is_refused_never_followed(tmp_path):
    data, link = tmp_path / "data", tmp_path / "link"
    make_dataset(data, train=2, test=1, shape=(16, 16), progress=False)
    link.symlink_to(data)
    for overwrite in (False, True):
        with pytest.raises(CloudpipeError, match="symbolic link"):
            make_dataset(link, train=3, test=1, shape=(16, 16), overwrite=overwrite, progress=False)
    assert link.is_symlink() and len(list((data / "train_images").iterdir())) == 2


def test_a_failed_image_write_is_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(cv2, "imwrite", lambda *args: False)  # what OpenCV says on a full disk
    with pytest.raises(CloudpipeError, match="cannot write"):
        make_dataset(tmp_path / "data", train=2, test=1, shape=(16, 16), progress=False)
    assert os.listdir(tmp_path) == []


def test_what_a_killed_synth_leaves_blocks_nothing(tmp_path, dead_pid):
    (tmp_path / f".data.{dead_pid}.tmp" / "train_images").mkdir(parents=True)  # a build killed with -9
    make_dataset(tmp_path / "data", train=2, test=1, shape=(16, 16), progress=False)
    assert _hidden(tmp_path) == [] and len(list((tmp_path / "data" / "train_images").iterdir())) == 2


# --- other profiles: steel, and a user's two classes on non-square images -----------------------------


def _user_profile(**changes):
    """Two classes on 48 x 80 tiles, submissions at 24 x 40, clouds' key layout unless ``changes`` say otherwise."""
    from cloudpipe.core.profile import Profile

    key = {"columns": ["Image_Label", "EncodedPixels"], "key": "Image_Label"}
    return Profile.model_validate({"name": "tiles", "classes": ["water", "land"], "image_size": [48, 80],
                                   "submission_size": [24, 40], "train_csv": key, "submission_csv": key, **changes})


ROW_PROFILE = _user_profile(
    name="rowtiles", rle_order="row",
    train_csv={"columns": ["tile", "kind", "rle"], "image": "tile", "class": "kind", "rows": "present"},
    submission_csv={"columns": ["tile", "rle", "kind"], "image": "tile", "class": "kind"})


def _masks_by_hand(path: Path, image_col: int, class_col: int, rle_col: int, classes, shape, order: str):
    """image -> (k, H, W) masks from a CSV, read with the csv module and decoded here (1-based runs
    over the pixels in ``order``), independent of cloudpipe's reader and codec."""
    h, w = shape
    out: dict[str, np.ndarray] = {}
    for row in read_rows(path)[1:]:
        flat = np.zeros(h * w, np.uint8)
        numbers = [int(t) for t in row[rle_col].split()]
        for start, length in zip(numbers[0::2], numbers[1::2]):
            flat[start - 1:start - 1 + length] = 1
        mask = flat.reshape(h, w) if order == "row" else flat.reshape(w, h).T
        image = row[image_col] if class_col >= 0 else row[0].rsplit("_", 1)[0]
        cls = row[class_col] if class_col >= 0 else row[0].rsplit("_", 1)[1]
        out.setdefault(image, np.zeros((len(classes), h, w), np.uint8))[classes.index(cls)] = mask
    return out


@pytest.mark.parametrize("profile", [_user_profile(), ROW_PROFILE], ids=["key-layout", "columns-row-order"])
def test_a_users_profile_through_synth_and_read_train(tmp_path, profile):
    from cloudpipe.core.masks import resize_nearest
    from cloudpipe.core.profile import use_profile
    from cloudpipe.data.kaggle import list_test_images, load_train_data
    from cloudpipe.data.profiles import load_profile
    from cloudpipe.data.synth import make_image

    out = tmp_path / "data"
    with use_profile(profile):
        summary = make_dataset(out, train=8, test=3, seed=2, progress=False)
        data = load_train_data(out)
        test = list_test_images(out)
    assert summary.shape == (48, 80) and data.image_shape == (48, 80)
    assert load_profile(out / "profile.yaml") == profile  # the folder says its profile
    train_names = sorted(p.name for p in (out / "train_images").iterdir())
    assert list(data.labels.index) == train_names and list(data.labels.columns) == ["water", "land"]
    assert test == sorted(p.name for p in (out / "test_images").iterdir())
    header = read_rows(out / "train.csv")[0]
    assert header == list(profile.train_csv.columns)
    assert read_rows(out / "test_truth.csv")[0] == read_rows(out / "sample_submission.csv")[0] == list(profile.submission_csv.columns)
    cols = (lambda layout: (layout.columns.index(layout.image), layout.columns.index(layout.class_), layout.columns.index(layout.pixels))
            if layout.image else (0, -1, 1))
    classes = list(profile.classes)
    # Every mask as make_image drew it, in the profile's pixel order; the present-only file lists no empty one.
    train = _masks_by_hand(out / "train.csv", *cols(profile.train_csv), classes, (48, 80), profile.rle_order)
    truth = _masks_by_hand(out / "test_truth.csv", *cols(profile.submission_csv), classes, (24, 40), profile.rle_order)
    with use_profile(profile):
        drawn = {n: make_image(np.random.default_rng([2, int(n[:7], 16)]), (48, 80))[1] for n in train_names + test}
    for name in train_names:
        np.testing.assert_array_equal(train.get(name, np.zeros((2, 48, 80), np.uint8)), drawn[name])
        assert data.labels.loc[name].tolist() == drawn[name].reshape(2, -1).any(axis=1).astype(int).tolist()
    for name in test:
        np.testing.assert_array_equal(truth[name], np.stack([resize_nearest(m, (24, 40)) for m in drawn[name]]))
    assert 0 < data.labels.to_numpy().sum() < data.labels.size  # not vacuous
    if profile.train_csv.rows == "present":
        assert all(row[2] for row in read_rows(out / "train.csv")[1:]) and len(train) < len(train_names)


def test_steel_synth_and_its_train_csv_line_numbers(tmp_path):
    from cloudpipe.core.profile import packaged, use_profile
    from cloudpipe.data.kaggle import load_train_data

    steel = packaged("steel").model_copy(update={"image_size": (32, 200), "submission_size": (16, 100)})
    out = tmp_path / "steel"
    with use_profile(steel):
        make_dataset(out, train=10, test=2, seed=1, progress=False)
        data = load_train_data(out)
    rows = read_rows(out / "train.csv")
    assert rows[0] == ["ImageId", "ClassId", "EncodedPixels"] and all(r[2] for r in rows[1:])
    sample = read_rows(out / "sample_submission.csv")
    assert sample[0] == ["ImageId", "EncodedPixels", "ClassId"] and sample[1:5] == [[sample[1][0], "1 1", c] for c in "1234"]
    assert list(data.labels.index) == sorted(p.name for p in (out / "train_images").iterdir())
    assert (out / "profile.yaml").exists()
    # The file's last row, made bad and moved first, is named at its line, though its pair comes
    # late in the completed frame (its image is sorted after the first row's).
    last = rows[-1]
    assert last[0] > rows[1][0]
    bad = ",".join([*last[:2], "1 99999"])
    (out / "train.csv").write_text("\n".join([",".join(rows[0]), bad, *(",".join(r) for r in rows[1:-1])]) + "\n")
    with use_profile(steel), pytest.raises(CloudpipeError) as info:
        load_train_data(out)
    assert f"train.csv, line 2: {last[0]}_{last[1]}: RLE run" in str(info.value)


def test_textures_beyond_the_fourth_class_are_stripes_of_their_own():
    """Classes past the fourth get stripes of distinct angle or width: their spectra peak apart."""
    from cloudpipe.data.synth import _STRIPES, _texture

    peaks = set()
    for k in range(4 + len(_STRIPES)):
        spectrum = np.abs(np.fft.fft2(_texture(k, np.random.default_rng(k), (160, 160)) - 128))
        spectrum[0, 0] = 0
        ky, kx = np.unravel_index(np.argmax(spectrum), spectrum.shape)
        peak = min((int(ky), int(kx)), ((-ky) % 160, (-kx) % 160))  # a real image's spectrum is symmetric
        if k == 0 or k >= 4:
            peaks.add(peak)
    assert len(peaks) == 1 + len(_STRIPES)
