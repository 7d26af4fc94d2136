import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.rle import rle2mask
from cloudpipe.data.images import jpeg_size
from cloudpipe.data.kaggle import (
    kfold_splits,
    list_test_images,
    presence,
    read_mask_csv,
    read_probs_csv,
    read_train,
    require_same_images,
    split_train_val,
    to_wide,
)
from tests.conftest import CLASSES

HEADER = "Image_Label,EncodedPixels\n"
REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "sample_submission.csv"


def rows(image: str, encoded=("", "", "", "")) -> str:
    return "".join(f"{image}_{c},{e}\n" for c, e in zip(CLASSES, encoded))


def write(tmp_path: Path, text: str, name: str = "masks.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path, **kwargs) -> str:
    with pytest.raises(CloudpipeError) as info:
        read_mask_csv(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return message


# --- read_mask_csv: bad inputs -------------------------------------------------------------


def test_missing_file(tmp_path):
    assert "not found" in error_of(tmp_path / "nope.csv")


def test_folder_instead_of_file(tmp_path):
    assert "not found" in error_of(tmp_path)


def test_empty_file(tmp_path):
    assert "empty" in error_of(write(tmp_path, ""))


def test_blank_file(tmp_path):
    assert "empty" in error_of(write(tmp_path, "\n\n"))


@pytest.mark.parametrize("text", [HEADER, HEADER.strip()])
def test_header_only(tmp_path, text):
    assert "no rows" in error_of(write(tmp_path, text))


@pytest.mark.parametrize(
    "header", ["ImageId,EncodedPixels", "Image_Label", "Image_Label,EncodedPixels,Extra", "EncodedPixels,Image_Label"]
)
def test_wrong_columns(tmp_path, header):
    message = error_of(write(tmp_path, header + "\n" + rows("a.jpg")))
    assert "line 1" in message
    assert "expected Image_Label,EncodedPixels" in message


def test_extra_field_in_first_row(tmp_path):
    # pandas would silently make the first column the index and shift everything by one.
    text = HEADER + "a.jpg_Fish,1 1,3\n" + rows("a.jpg")[len("a.jpg_Fish,\n") :]
    message = error_of(write(tmp_path, text))
    assert "line 2" in message and "more fields" in message


def test_extra_field_in_later_row(tmp_path):
    text = HEADER + "a.jpg_Fish,1 1\na.jpg_Flower,1 1,3\na.jpg_Gravel,\na.jpg_Sugar,\n"
    assert "line 3" in error_of(write(tmp_path, text))


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(HEADER.encode() + b"\xff\xfe.jpg_Fish,\n")
    assert "not a readable CSV" in error_of(path)


@pytest.mark.parametrize("label", ["a.jpgFish", "_Fish"])
def test_label_without_image_or_underscore(tmp_path, label):
    text = HEADER + rows("b.jpg") + f"{label},\n"
    message = error_of(write(tmp_path, text))
    assert "line 6" in message and repr(label) in message


@pytest.mark.parametrize("cls", ["Cloud", "fish", "Fish ", ""])
def test_unknown_class(tmp_path, cls):
    text = HEADER + "a.jpg_Fish,\n" + f"a.jpg_{cls},\n"
    message = error_of(write(tmp_path, text))
    assert "line 3" in message and "unknown class" in message and repr(cls) in message


def test_duplicate_row(tmp_path):
    text = HEADER + rows("a.jpg") + rows("b.jpg") + "a.jpg_Gravel,1 1\n"
    message = error_of(write(tmp_path, text))
    assert "duplicate" in message and "a.jpg_Gravel" in message
    assert "line 10" in message  # the second occurrence


@pytest.mark.parametrize("image", ["../x.jpg", "/etc/x.jpg", "sub/x.jpg", "..\\x.jpg", "C:\\x.jpg", ".", "..", "x\0.jpg"])
def test_image_name_that_is_not_a_plain_file_name(tmp_path, image):
    # It would read a file outside test_images/ (or train_images/).
    message = error_of(write(tmp_path, HEADER + rows("a.jpg") + rows(image)))
    assert "line 6" in message and f"image name {image!r} is not a plain file name" in message


def test_line_numbers_count_blank_lines(tmp_path):
    # pandas skips blank lines: the bad row (file line 8) used to be reported as line 7.
    text = HEADER + rows("a.jpg") + "\n" + "b.jpg_Fish,\nb.jpg_Flower,5 x\n"
    message = error_of(write(tmp_path, text))
    assert "line 6: blank line" in message
    text = HEADER + rows("a.jpg") + rows("b.jpg", ("", "99 1", "", ""))
    path = write(tmp_path, text.replace("a.jpg_Sugar,\n", "a.jpg_Sugar,\n\n"))
    assert "line 6: blank line" in error_of(path, shape=(4, 4))


def test_blank_lines_at_the_end_are_ignored(tmp_path):
    path = write(tmp_path, HEADER + rows("a.jpg") + "\n\n")
    assert list(read_mask_csv(path)["image"]) == ["a.jpg"] * 4
    with pytest.raises(CloudpipeError, match="has a header but no rows"):
        read_mask_csv(write(tmp_path, HEADER + "\n\n"))


def test_cell_spanning_lines(tmp_path):
    text = HEADER + rows("a.jpg", ("", '"1 1\n3 1"', "", "")) + rows("b.jpg", ("", "", "", "x"))
    message = error_of(write(tmp_path, text))
    assert "line 3: a quoted cell spans several lines" in message


def test_image_missing_a_class(tmp_path):
    text = HEADER + rows("a.jpg") + "b.jpg_Fish,\nb.jpg_Gravel,\nb.jpg_Sugar,\n" + rows("c.jpg")
    message = error_of(write(tmp_path, text))
    assert "'b.jpg'" in message and "Flower" in message
    assert "Fish" not in message.split("lacks", 1)[1].split("(")[0]


@pytest.mark.parametrize(
    "rle",
    ["1 x", "3", "0 1", "1 0", "-1 2", "5 1 3 1", "1 3 2 1", "16 2", "1.5 2", "1 1 1 1",
     "+1 +1", "1\t1", "1\xa01", "1  1", " 1 1", "1 1 "],
)
def test_malformed_rle_with_shape(tmp_path, rle):
    text = HEADER + rows("a.jpg") + rows("b.jpg", ("", rle, "", ""))  # the bad cell is on line 7
    path = write(tmp_path, text)
    message = error_of(path, shape=(4, 4))
    assert "line 7" in message and "b.jpg_Flower" in message and "4x4" in message
    # Without a shape the RLE text is not checked.
    assert read_mask_csv(path)["EncodedPixels"].iat[5] == rle


def test_valid_rle_with_shape(tmp_path):
    path = write(tmp_path, HEADER + rows("a.jpg", ("1 16", "", "2 3", "16 1")))
    assert len(read_mask_csv(path, shape=(4, 4))) == 4


# --- read_mask_csv: content -------------------------------------------------------------------


def test_cells_stay_text(tmp_path):
    cells = ("NA", "nan", "", "1 1")
    frame = read_mask_csv(write(tmp_path, HEADER + rows("NA", cells) + rows("None")))
    assert frame["EncodedPixels"].tolist()[:4] == list(cells)
    assert frame["EncodedPixels"].tolist()[4:] == ["", "", "", ""]
    assert all(isinstance(v, str) for v in frame.to_numpy().ravel())
    assert frame["image"].tolist() == ["NA"] * 4 + ["None"] * 4
    # Presence is "the cell is not empty": the NA-looking text counts, the empty cell does not.
    assert presence(frame).loc["NA"].tolist() == [1, 1, 0, 1]


def test_split_on_last_underscore(tmp_path):
    text = HEADER + rows("a_b.jpg", ("1 1", "", "", "")) + rows("x_Fish_y.jpg")
    frame = read_mask_csv(write(tmp_path, text))
    assert list(frame.columns) == ["Image_Label", "EncodedPixels", "image", "class_name"]
    assert frame["image"].tolist() == ["a_b.jpg"] * 4 + ["x_Fish_y.jpg"] * 4
    assert frame["class_name"].tolist() == list(CLASSES) * 2
    assert frame["Image_Label"].iat[0] == "a_b.jpg_Fish"
    assert list(to_wide(frame).index) == ["a_b.jpg", "x_Fish_y.jpg"]


def test_keeps_file_order(tmp_path):
    # Classes out of order and interleaved images are fine; the frame keeps the file's order.
    lines = ["b.jpg_Sugar,4 1", "a.jpg_Fish,1 1", "b.jpg_Fish,2 1", "a.jpg_Gravel,", "b.jpg_Flower,",
             "a.jpg_Sugar,", "b.jpg_Gravel,3 2", "a.jpg_Flower,5 5"]
    frame = read_mask_csv(write(tmp_path, HEADER + "\n".join(lines) + "\n"), shape=(4, 4))
    assert frame["Image_Label"].tolist() == [line.split(",")[0] for line in lines]
    assert frame["EncodedPixels"].tolist() == [line.split(",")[1] for line in lines]


def test_to_wide_order_and_values(tmp_path):
    lines = ["b.jpg_Sugar,4 1", "a.jpg_Fish,1 1", "b.jpg_Fish,2 1", "a.jpg_Gravel,", "b.jpg_Flower,",
             "a.jpg_Sugar,", "b.jpg_Gravel,3 2", "a.jpg_Flower,5 5"]
    wide = to_wide(read_mask_csv(write(tmp_path, HEADER + "\n".join(lines) + "\n")))
    assert list(wide.index) == ["b.jpg", "a.jpg"]  # first appearance, not sorted
    assert list(wide.columns) == ["Fish", "Flower", "Gravel", "Sugar"]
    assert wide.loc["b.jpg"].tolist() == ["2 1", "", "3 2", "4 1"]
    assert wide.loc["a.jpg"].tolist() == ["1 1", "5 5", "", ""]


def test_presence_from_text(tmp_path):
    text = HEADER + rows("z.jpg", ("", "1 1", " ", "3 4")) + rows("a.jpg", ("9 9", "", "", ""))
    labels = presence(read_mask_csv(write(tmp_path, text)))
    assert list(labels.index) == ["z.jpg", "a.jpg"]
    assert list(labels.columns) == list(CLASSES)
    assert (labels.dtypes == np.int64).all()
    assert labels.to_numpy().tolist() == [[0, 1, 0, 1], [1, 0, 0, 0]]


def test_presence_matches_decoded_masks(tiny_data):
    """Independent check: read train.csv with the csv module and decode every mask."""
    frame = read_train(tiny_data)
    labels = presence(frame)
    with open(tiny_data / "train.csv", newline="") as f:
        records = list(csv.reader(f))[1:]
    shape = jpeg_size(next((tiny_data / "train_images").glob("*.jpg")))
    decoded: dict[str, dict[str, int]] = {}
    for label, rle in records:
        image, cls = label.rsplit("_", 1)
        decoded.setdefault(image, {})[cls] = int(rle2mask(rle, shape).any())
    assert list(labels.index) == list(decoded)
    expected = np.array([[decoded[i][c] for c in CLASSES] for i in labels.index])
    np.testing.assert_array_equal(labels.to_numpy(), expected)
    assert 0 < expected.sum() < expected.size  # not a vacuous comparison


def test_read_train(tiny_data, tmp_path):
    frame = read_train(tiny_data)
    assert len(frame) == 24 * 4
    assert frame["image"].nunique() == 24
    with pytest.raises(CloudpipeError, match="folder not found"):
        read_train(tmp_path / "missing")
    with pytest.raises(CloudpipeError, match="train.csv"):
        read_train(tmp_path)


# --- splits ---------------------------------------------------------------------------------------


def random_labels(n: int, seed: int = 0, p: float = 0.5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        (rng.random((n, 4)) < p).astype(np.int64), index=[f"{i:07x}.jpg" for i in range(n)], columns=list(CLASSES)
    )


def labels_with_counts(counts: list[int]) -> pd.DataFrame:
    data = [[1] * c + [0] * (4 - c) for c in counts]
    return pd.DataFrame(data, index=[f"img{i}.jpg" for i in range(len(counts))], columns=list(CLASSES))


def check_partition(images, train, val):
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(images)
    assert len(train) + len(val) == len(images)  # no duplicates


def test_split_train_val_basic(tiny_data):
    labels = presence(read_train(tiny_data))
    train, val = split_train_val(labels)
    check_partition(list(labels.index), train, val)
    assert len(val) == 3  # ceil(10% of 24)
    assert (train, val) == split_train_val(labels, 0.1, 69)  # deterministic, seed 69 by default
    assert (train, val) == split_train_val(labels.copy())


def test_split_train_val_seed_changes_split():
    labels = random_labels(200)
    splits = {tuple(sorted(split_train_val(labels, seed=s)[1])) for s in range(5)}
    assert len(splits) == 5


def test_split_train_val_is_stratified():
    labels = random_labels(200, seed=1)
    train, val = split_train_val(labels)
    check_partition(list(labels.index), train, val)
    assert len(val) == 20
    counts = labels.sum(axis=1)
    overall = counts.value_counts(normalize=True)
    in_val = counts.loc[val].value_counts(normalize=True).reindex(overall.index, fill_value=0)
    # Stratified: each stratum's share in the 20 validation images is within one image of its share.
    assert (in_val - overall).abs().max() <= 1 / 20 + 1e-9


@pytest.mark.parametrize("counts", [[0, 1, 2, 3, 4], [1, 1], [4, 0], [2, 2, 2, 1, 3, 0, 4], [1] * 9 + [4]])
def test_split_train_val_tiny(counts):
    labels = labels_with_counts(counts)
    train, val = split_train_val(labels)
    check_partition(list(labels.index), train, val)
    assert len(val) == 1
    assert len(train) == len(counts) - 1


def test_split_train_val_fraction():
    labels = random_labels(50)
    train, val = split_train_val(labels, val_fraction=0.3)
    check_partition(list(labels.index), train, val)
    assert len(val) == 15


@pytest.mark.parametrize("n,fraction", [(1, 0.1), (0, 0.1), (10, 0.0), (10, 1.0), (10, -0.1)])
def test_split_train_val_invalid(n, fraction):
    with pytest.raises(CloudpipeError):
        split_train_val(random_labels(n), val_fraction=fraction)


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_kfold_every_image_validated_once(tiny_data, folds):
    labels = presence(read_train(tiny_data))
    splits = kfold_splits(labels, folds)
    assert len(splits) == folds
    seen = Counter()
    for train, val in splits:
        check_partition(list(labels.index), train, val)
        seen.update(val)
    assert set(seen) == set(labels.index) and set(seen.values()) == {1}
    sizes = [len(val) for _, val in splits]
    assert max(sizes) - min(sizes) <= 1
    assert splits == kfold_splits(labels, folds)  # deterministic


def test_kfold_stratified():
    labels = random_labels(200, seed=2)
    counts = labels.sum(axis=1)
    overall = counts.value_counts()
    for _, val in kfold_splits(labels, 4):
        got = counts.loc[val].value_counts().reindex(overall.index, fill_value=0)
        assert ((got - overall / 4).abs() <= 1).all()


def test_kfold_tiny_and_leave_one_out():
    labels = labels_with_counts([0, 1, 2, 3, 4])
    splits = kfold_splits(labels, 5)
    assert sorted(v for _, val in splits for v in val) == sorted(labels.index)
    assert all(len(val) == 1 for _, val in splits)


@pytest.mark.parametrize("folds", [-1, 0, 1, 6, 100])
def test_kfold_invalid(folds):
    with pytest.raises(CloudpipeError, match="folds"):
        kfold_splits(labels_with_counts([0, 1, 2, 3, 4]), folds)


# --- test images ------------------------------------------------------------------------------------


def test_list_test_images_from_sample_submission(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    folder_names = sorted(p.name for p in (data / "test_images").iterdir())
    assert list_test_images(data) == folder_names  # synth writes the sample in sorted order
    # The sample submission's order wins over the folder's.
    order = list(reversed(folder_names))
    order[0], order[2] = order[2], order[0]
    (data / "sample_submission.csv").write_text(HEADER + "".join(rows(n, ("1 1",) * 4) for n in order))
    assert list_test_images(data) == order


def test_list_test_images_from_folder(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "sample_submission.csv").unlink()
    (data / "test_images" / "notes.txt").write_text("not an image")
    expected = sorted(p.name for p in (data / "test_images").glob("*.jpg"))
    assert len(expected) == 6
    assert list_test_images(data) == expected


def test_list_test_images_errors(tmp_path):
    with pytest.raises(CloudpipeError, match="folder not found"):
        list_test_images(tmp_path / "missing")
    with pytest.raises(CloudpipeError, match="sample_submission.csv"):
        list_test_images(tmp_path)
    (tmp_path / "test_images").mkdir()
    with pytest.raises(CloudpipeError, match="no .jpg images"):
        list_test_images(tmp_path)
    write(tmp_path, HEADER + "a.jpg_Fish,1 1\n", "sample_submission.csv")
    with pytest.raises(CloudpipeError, match="sample_submission.csv"):
        list_test_images(tmp_path)


@pytest.mark.skipif(not REAL_SAMPLE.is_file(), reason="real sample_submission.csv not available")
def test_real_sample_submission(tmp_path):
    shutil.copy(REAL_SAMPLE, tmp_path / "sample_submission.csv")
    images = list_test_images(tmp_path)
    with open(REAL_SAMPLE, newline="") as f:
        first = list(csv.reader(f))[1][0]
    assert len(images) == 3698 and len(set(images)) == 3698
    assert images[0] == first.rsplit("_", 1)[0]
    frame = read_mask_csv(REAL_SAMPLE, shape=(350, 525))
    assert (frame["EncodedPixels"] == "1 1").all()
    assert presence(frame).to_numpy().all()


def test_require_same_images():
    require_same_images(["a", "b"], ["b", "a"], "it")  # order does not matter
    with pytest.raises(CloudpipeError, match=r"^preds lacks 2 image\(s\) \(e\.g\. b, c\)$"):
        require_same_images(["a", "b", "c"], ["a"], "preds")
    with pytest.raises(CloudpipeError, match=r"^preds has 4 extra image\(s\) \(e\.g\. b, c, d\)$"):
        require_same_images(["a"], ["a", "b", "c", "d", "e"], "preds")


def test_read_probs_csv(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("image,Fish,Flower,Gravel,Sugar\na.jpg,0.1,0.2,0.3,1\nb.jpg,0,0.5,0.25,0.75\n")
    probs = read_probs_csv(path)
    assert list(probs.index) == ["a.jpg", "b.jpg"] and probs.loc["b.jpg", "Sugar"] == 0.75


@pytest.mark.parametrize("text, message", [
    ("image,Fish,Flower,Gravel\na.jpg,0.1,0.2,0.3\n", "columns are"),
    ("image,Fish,Flower,Gravel,Sugar\n", "no rows"),
    ("image,Fish,Flower,Gravel,Sugar\na.jpg,0.1,x,0.3,1\n", "line 2: Flower probability 'x'"),
    ("image,Fish,Flower,Gravel,Sugar\na.jpg,0.1,0.2,0.3,1\nb.jpg,0.1,0.2,1.5,1\n", "line 3: Gravel probability '1.5'"),
    ("image,Fish,Flower,Gravel,Sugar\na.jpg,0.1,0.2,,1\n", "Gravel probability ''"),
    ("image,Fish,Flower,Gravel,Sugar\na.jpg,0.1,0.2,0.3,1\na.jpg,0.1,0.2,0.3,1\n", "line 3: duplicate image 'a.jpg'"),
    ("image,Fish,Flower,Gravel,Sugar\na.jpg,0,0,0,0\n../b.jpg,0,0,0,0\n", "line 3: image name '../b.jpg' is not a plain"),
    ("image,Fish,Flower,Gravel,Sugar\n,0,0,0,0\n", "line 2: image name '' is not a plain"),
    ("image,Fish,Flower,Gravel,Sugar\na.jpg,0,0,0,0\n\nb.jpg,0,x,0,0\n", "line 3: blank line"),
])
def test_read_probs_csv_errors(tmp_path, text, message):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(CloudpipeError, match=message):
        read_probs_csv(path)


def test_write_submission_checks_every_row_and_never_replaces_silently(tmp_path):
    from cloudpipe.data.kaggle import write_submission

    frame = pd.DataFrame({"Image_Label": [f"a.jpg_{c}" for c in CLASSES], "EncodedPixels": ["1 3", None, "", "10 2"],
                          "extra": 1})
    out = write_submission(frame, tmp_path / "sub.csv")
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(written.columns) == ["Image_Label", "EncodedPixels"] and written["EncodedPixels"].tolist() == ["1 3", "", "", "10 2"]
    with pytest.raises(CloudpipeError, match="exists"):
        write_submission(frame, out)
    write_submission(frame.iloc[::-1], out, overwrite=True)  # rows kept in the frame's order
    assert pd.read_csv(out)["Image_Label"].iloc[0] == "a.jpg_Sugar"
    with pytest.raises(CloudpipeError, match="submission DataFrame"):
        write_submission(frame.assign(EncodedPixels=["1 3", "", "", "999999 5"]), tmp_path / "bad.csv")
    with pytest.raises(CloudpipeError, match="lacks column"):
        write_submission(frame[["Image_Label"]], tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()


@pytest.mark.parametrize("name", ["../train.csv", "/etc/passwd", "a\\b.jpg", "..", ""])
def test_find_image_takes_plain_file_names_only(tiny_data, name):
    from cloudpipe.data.kaggle import find_image

    with pytest.raises(CloudpipeError, match="is not a plain file name"):
        find_image(tiny_data, name)


def test_a_mask_shape_that_is_not_two_positive_numbers_is_refused(tiny_data):
    """predict's library call with mask_shape (-1, -1) used to pass a CSV of empty masks."""
    from cloudpipe.data.kaggle import read_mask_csv

    for shape in ((-1, -1), (0, 525)):
        with pytest.raises(ValueError, match="shape must be \\(H, W\\), two whole numbers >= 1"):
            read_mask_csv(tiny_data / "sample_submission.csv", shape=shape)


# --- the steel profile's layouts: an image and a class column ---------------------------------------

STEEL_SUB = "ImageId,EncodedPixels,ClassId\n"
STEEL_TRAIN = "ImageId,ClassId,EncodedPixels\n"


@pytest.fixture()
def steel():
    from cloudpipe.core.profile import packaged, use_profile

    with use_profile(packaged("steel")) as profile:
        yield profile


def steel_rows(image: str, encoded=("", "", "", "")) -> str:
    return "".join(f"{image},{e},{c}\n" for c, e in zip("1234", encoded))


def test_steel_submission_layout_reads_as_the_long_frame(tmp_path, steel):
    text = STEEL_SUB + steel_rows("b.jpg", ("1 3", "", "", "7 2")) + steel_rows("a.jpg")
    frame = read_mask_csv(write(tmp_path, text), shape=(4, 4))
    assert list(frame.columns) == ["Image_Label", "EncodedPixels", "image", "class_name"]
    assert frame["Image_Label"].tolist()[:2] == ["b.jpg_1", "b.jpg_2"]
    assert frame["image"].tolist() == ["b.jpg"] * 4 + ["a.jpg"] * 4
    assert to_wide(frame).loc["b.jpg"].tolist() == ["1 3", "", "", "7 2"]


def test_steel_present_only_train_csv_gets_every_pair_of_its_images(tmp_path, steel):
    text = STEEL_TRAIN + "b.jpg,3,1 2\na.jpg,1,5 1\nb.jpg,1,9 9\n"
    frame = read_mask_csv(write(tmp_path, text))
    assert frame["Image_Label"].tolist() == [f"{i}_{c}" for i in ("b.jpg", "a.jpg") for c in "1234"]
    assert frame["EncodedPixels"].tolist() == ["9 9", "", "1 2", "", "5 1", "", "", ""]
    # A bad mask is reported at its line of the file, not at its place in the completed frame.
    message = error_of(write(tmp_path, text), shape=(3, 3))
    assert "line 4" in message and "b.jpg_1" in message and "3x3" in message


@pytest.mark.parametrize("text, line, what", [
    (STEEL_SUB + steel_rows("a.jpg") + "b.jpg,,5\n", 6, "unknown class '5' of image 'b.jpg' in column ClassId (classes: 1, 2, 3, 4)"),
    (STEEL_SUB + steel_rows("a.jpg") + "a.jpg,1 1,3\n", 6, "duplicate ImageId,ClassId pair ('a.jpg', '3')"),
    (STEEL_SUB + steel_rows("a.jpg", ("", "1 1", "", "")) + steel_rows("b.jpg", ("", "", "1 99", "")), 8, "b.jpg_3: RLE run"),
    (STEEL_SUB + steel_rows("a.jpg") + steel_rows("../b.jpg"), 6, "image name '../b.jpg' is not a plain file name"),
    (STEEL_TRAIN + "a.jpg,1,1 1\na.jpg,7,1 1\n", 3, "unknown class '7'"),
    (STEEL_TRAIN + "a.jpg,1,1 1\nb.jpg,1,\na.jpg,1,2 1\n", 4, "duplicate ImageId,ClassId pair ('a.jpg', '1')"),
])
def test_steel_errors_name_file_and_line(tmp_path, steel, text, line, what):
    message = error_of(write(tmp_path, text), shape=(4, 4))
    assert f"line {line}" in message and what in message


def test_steel_submission_layout_needs_every_class(tmp_path, steel):
    message = error_of(write(tmp_path, STEEL_SUB + steel_rows("a.jpg") + "b.jpg,,1\nb.jpg,,4\n"))
    assert "image 'b.jpg' lacks rows for 2, 3 (1 image(s) without all 4 classes)" in message


@pytest.mark.parametrize("header", ["Image_Label,EncodedPixels", "ImageId,ClassId", "ClassId,ImageId,EncodedPixels"])
def test_steel_wrong_header_names_both_layouts(tmp_path, steel, header):
    message = error_of(write(tmp_path, header + "\na.jpg,1,\n"))
    assert "line 1" in message
    assert "expected ImageId,ClassId,EncodedPixels or ImageId,EncodedPixels,ClassId" in message


def test_steel_key_layout_of_the_first_release(tmp_path):
    """The packaged steel-v1: Severstal's first release, ImageId_ClassId,EncodedPixels, 4 rows per image."""
    from cloudpipe.core.profile import packaged, use_profile

    with use_profile(packaged("steel-v1")):
        text = "ImageId_ClassId,EncodedPixels\n" + "".join(f"0002cc93b.jpg_{c},{'1 5' if c == '1' else ''}\n" for c in "1234")
        frame = read_mask_csv(write(tmp_path, text), shape=(256, 1600))
        assert frame["image"].tolist() == ["0002cc93b.jpg"] * 4 and presence(frame).to_numpy().tolist() == [[1, 0, 0, 0]]
        message = error_of(write(tmp_path, text + "0002cc93b.jpg_1,\n"))
        assert "line 6" in message and "duplicate ImageId_ClassId '0002cc93b.jpg_1'" in message


def read_severstal_submission(path: Path) -> dict[tuple[str, int], np.ndarray]:
    """Severstal's submission format, read with the csv module alone (no cloudpipe): header
    ImageId,EncodedPixels,ClassId; one row per test image and class 1-4; RLE of 1-based starts
    and lengths over the column-major pixels of a 256 x 1600 mask, runs sorted and apart."""
    height, width = 256, 1600
    masks: dict[tuple[str, int], np.ndarray] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["ImageId", "EncodedPixels", "ClassId"]
        for image, rle, cls in reader:
            assert cls in ("1", "2", "3", "4") and (image, int(cls)) not in masks
            numbers = [int(t) for t in rle.split(" ")] if rle else []
            assert len(numbers) % 2 == 0
            flat, end = np.zeros(height * width, np.uint8), 0
            for start, length in zip(numbers[0::2], numbers[1::2]):
                assert start > end and length >= 1 and start - 1 + length <= height * width
                flat[start - 1:start - 1 + length] = 1
                end = start - 1 + length
            masks[image, int(cls)] = flat.reshape(width, height).T  # down each column first
    assert all((image, c) in masks for image, _ in masks for c in range(1, 5))
    return masks


def test_a_steel_submission_is_written_in_severstals_layout(tmp_path, steel):
    from cloudpipe.core.rle import mask2rle
    from cloudpipe.data.kaggle import write_submission

    rng = np.random.default_rng(0)
    masks = {}
    for image in ("0000f269f.jpg", "000ccc2ac.jpg"):
        for c in range(1, 5):
            mask = np.zeros((256, 1600), np.uint8)
            if rng.random() < 0.7:
                top, left = rng.integers(0, 200), rng.integers(0, 1500)
                mask[top:top + rng.integers(1, 56), left:left + rng.integers(1, 100)] = 1
            masks[image, c] = mask
    frame = pd.DataFrame({"Image_Label": [f"{i}_{c}" for i, c in masks], "EncodedPixels": [mask2rle(m) for m in masks.values()]})
    out = write_submission(frame, tmp_path / "submission.csv")
    read = read_severstal_submission(out)
    assert list(read) == list(masks)  # image-major, the frame's order
    assert all((read[k] == masks[k]).all() for k in masks)
    assert any(m.any() for m in masks.values()) and not all(m.any() for m in masks.values())
    # cloudpipe reads it back as it was written, and writes the same bytes again.
    again = write_submission(read_mask_csv(out, shape=(256, 1600)), tmp_path / "again.csv")
    assert again.read_bytes() == out.read_bytes()


def test_to_layout_present_rows_leave_empty_masks_out(tmp_path, steel):
    from cloudpipe.data.kaggle import to_layout

    text = STEEL_TRAIN + "b.jpg,3,1 2\na.jpg,1,5 1\nb.jpg,1,9 9\n"
    frame = read_mask_csv(write(tmp_path, text))
    rows = to_layout(frame, steel.train_csv)
    assert list(rows.columns) == ["ImageId", "ClassId", "EncodedPixels"]
    assert rows.to_numpy().tolist() == [["b.jpg", "1", "9 9"], ["b.jpg", "3", "1 2"], ["a.jpg", "1", "5 1"]]
    assert len(to_layout(frame, steel.submission_csv)) == 8


def test_a_dataframe_in_the_submission_layout_is_read_too(steel):
    from cloudpipe.data.kaggle import mask_frame_of

    frame = pd.DataFrame({"ImageId": ["a.jpg"] * 4, "EncodedPixels": ["1 1", None, "", ""], "ClassId": list("1234")})
    long = mask_frame_of(frame, "my DataFrame", shape=(4, 4))
    assert long["Image_Label"].tolist() == ["a.jpg_1", "a.jpg_2", "a.jpg_3", "a.jpg_4"]
    with pytest.raises(CloudpipeError, match="my DataFrame lacks column"):
        mask_frame_of(frame.drop(columns="ClassId"), "my DataFrame")


def test_steel_test_images_from_severstals_own_sample_submission(tmp_path, steel):
    """Severstal's sample_submission.csv has one row per test image, of class 0: only its image column counts."""
    (tmp_path / "sample_submission.csv").write_text(
        STEEL_SUB + "0000f269f.jpg,1 409600,0\n000ccc2ac.jpg,1 409600,0\n00c88fed0.jpg,1 409600,0\n")
    assert list_test_images(tmp_path) == ["0000f269f.jpg", "000ccc2ac.jpg", "00c88fed0.jpg"]
    # A synth-style sample (a row per image and class) gives each image once, in first-appearance order.
    (tmp_path / "sample_submission.csv").write_text(STEEL_SUB + steel_rows("z.jpg", ("1 1",) * 4) + steel_rows("a.jpg"))
    assert list_test_images(tmp_path) == ["z.jpg", "a.jpg"]
    (tmp_path / "sample_submission.csv").write_text(STEEL_SUB + "a.jpg,1 1,0\n../b.jpg,1 1,0\n")
    with pytest.raises(CloudpipeError, match="line 3: image name '../b.jpg' is not a plain file name"):
        list_test_images(tmp_path)


def test_steel_train_images_are_the_folders(tmp_path, steel):
    """A present-only train.csv lists the images with a defect; the others are only in train_images/."""
    (tmp_path / "train_images").mkdir()
    for name in ("c.jpg", "a.jpg", "b.jpg"):
        (tmp_path / "train_images" / name).write_bytes(b"")
    (tmp_path / "train_images" / "notes.txt").write_text("not an image")
    (tmp_path / "train.csv").write_text(STEEL_TRAIN + "c.jpg,2,1 1\na.jpg,4,3 1\n")
    labels = presence(read_train(tmp_path))
    assert list(labels.index) == ["a.jpg", "b.jpg", "c.jpg"]
    assert labels.to_numpy().tolist() == [[0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]]
    (tmp_path / "train.csv").write_text(STEEL_TRAIN + "c.jpg,2,1 1\nd.jpg,4,3 1\n")
    with pytest.raises(CloudpipeError, match=r"train.csv: lists image 'd.jpg', which is not in train_images/ \(1 such\)"):
        read_train(tmp_path)
