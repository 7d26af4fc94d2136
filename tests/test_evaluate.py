from pathlib import Path

import pytest

from cloudpipe.core.competition import CLASSES
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.pipeline.evaluate import evaluate_files

# Pixel numbers of a 2x3 mask (column-major, 1-indexed):   1 3 5
#                                                           2 4 6



def write_csv(path: Path, rows: dict[str, tuple[str, str, str, str]]) -> Path:
    lines = ["Image_Label,EncodedPixels"]
    lines += [f"{image}_{c},{rle}" for image, rles in rows.items() for c, rle in zip(CLASSES, rles)]
    path.write_text("\n".join(lines) + "\n")
    return path


TRUTH = {"a": ("", "", "1 1", "3 2"), "b": ("1 6", "2 3", "1 1 6 1", "")}
PRED = {"a": ("", "1 2", "1 2", ""), "b": ("1 6", "3 3", "5 2", "")}
def test_evaluate_files(tmp_path):
    truth = write_csv(tmp_path / "truth.csv", {"c": ("1 1 19 1", "6 1", "24 1", "1 4"), "d": ("", "", "", "")})
    pred = write_csv(tmp_path / "pred.csv", {"d": ("", "", "", ""), "c": ("1 1", "", "6 1", "1 2")})
    table = evaluate_files(truth, pred, (4, 6), (2, 3))
    # c: [2/3, 1, 0, 1] (see test_truth_resized_nearest); d: all empty = [1, 1, 1, 1]
    assert table == pytest.approx({"Fish": 5 / 6, "Flower": 1, "Gravel": 0.5, "Sugar": 1, "mean": 5 / 6})
    assert evaluate_files(truth, truth, (4, 6), (4, 6)) == pytest.approx(dict.fromkeys([*CLASSES, "mean"], 1.0))


def test_evaluate_files_image_mismatch(tmp_path):
    empty = ("", "", "", "")
    truth = write_csv(tmp_path / "truth.csv", {"x.jpg": empty, "y.jpg": empty, "z.jpg": empty})
    pred = write_csv(tmp_path / "pred.csv", {"x.jpg": empty, "q.jpg": empty, "z.jpg": empty})
    with pytest.raises(CloudpipeError) as info:
        evaluate_files(truth, pred, (2, 3), (2, 3))
    message = str(info.value)
    assert str(pred) in message and str(truth) in message
    assert "lacks 1 image(s) (e.g. y.jpg)" in message
    assert "1 extra image(s) (e.g. q.jpg)" in message
    assert "\n" not in message


def test_evaluate_files_validates_rle_at_each_shape(tmp_path):
    truth = write_csv(tmp_path / "truth.csv", {"x": ("24 1", "", "", "")})  # fine at 4x6
    pred = write_csv(tmp_path / "pred.csv", {"x": ("", "", "6 2", "")})  # runs past pixel 6 of 2x3
    with pytest.raises(CloudpipeError, match=r"pred\.csv, line 4: x_Gravel"):
        evaluate_files(truth, pred, (4, 6), (2, 3))
    with pytest.raises(CloudpipeError, match=r"truth\.csv, line 2: x_Fish"):
        evaluate_files(truth, truth, (2, 3), (2, 3))


def test_truth_at_prediction_size_read_as_full_size_is_an_error(tmp_path):
    from cloudpipe.data.synth import make_dataset

    data = make_dataset(tmp_path / "d", train=2, test=12, shape=(64, 96), seed=1, progress=False).out_dir
    truth = data / "test_truth.csv"  # masks at 350 x 525
    with pytest.raises(CloudpipeError, match="pass --truth-shape 350 525"):
        evaluate_files(truth, truth, (1400, 2100), (350, 525))
    assert evaluate_files(truth, truth, (350, 525), (350, 525))["mean"] == 1.0
