from pathlib import Path

import pytest

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.pipeline.evaluate import evaluate_files
from tests.conftest import CLASSES

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
    result = evaluate_files(truth, pred, (4, 6), (2, 3))
    # c: [2/3, 1, 0, 1] (see test_truth_resized_nearest); d: all empty = [1, 1, 1, 1]
    assert result.table == pytest.approx({"Fish": 5 / 6, "Flower": 1, "Gravel": 0.5, "Sugar": 1, "mean": 5 / 6})
    assert (result.scored, result.truth_images) == (2, 2)
    assert evaluate_files(truth, truth, (4, 6), (4, 6)).table == pytest.approx(dict.fromkeys([*CLASSES, "mean"], 1.0))


def test_evaluate_files_image_mismatch(tmp_path):
    empty = ("", "", "", "")
    truth = write_csv(tmp_path / "truth.csv", {"x.jpg": empty, "y.jpg": empty, "z.jpg": empty})
    pred = write_csv(tmp_path / "pred.csv", {"x.jpg": empty, "q.jpg": empty, "z.jpg": empty})
    with pytest.raises(CloudpipeError) as info:
        evaluate_files(truth, pred, (2, 3), (2, 3))
    message = str(info.value)
    assert str(pred) in message and str(truth) in message
    assert "has 1 extra image(s) (e.g. q.jpg)" in message and "lacks" not in message
    assert "\n" not in message


def test_evaluate_scores_the_images_the_prediction_covers(tmp_path):
    # e.g. a run's val_seg.csv against train.csv: only validation images are predicted.
    truth = write_csv(tmp_path / "truth.csv", {**TRUTH, "c": ("1 6", "", "", "")})
    pred = write_csv(tmp_path / "pred.csv", {"b": PRED["b"], "a": PRED["a"]})
    result = evaluate_files(truth, pred, (2, 3), (2, 3))
    assert (result.scored, result.truth_images) == (2, 3)
    # The same Dice as against a truth of exactly those images.
    same = evaluate_files(write_csv(tmp_path / "ab.csv", TRUTH), pred, (2, 3), (2, 3))
    assert (same.scored, same.truth_images) == (2, 2) and result.table == same.table


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
    with pytest.raises(CloudpipeError, match="pass --truth-shape H W with their real size"):
        evaluate_files(truth, truth, (1400, 2100), (350, 525))
    assert evaluate_files(truth, truth, (350, 525), (350, 525)).table["mean"] == 1.0


def test_prediction_at_submission_size_read_as_full_size_is_an_error(tmp_path):
    # It used to score silently wrong (0.20 instead of 0.32 on a real submission).
    from cloudpipe.data.synth import make_dataset

    data = make_dataset(tmp_path / "d", train=2, test=12, shape=(64, 96), seed=1, progress=False).out_dir
    submission = data / "test_truth.csv"  # masks at 350 x 525
    with pytest.raises(CloudpipeError) as info:
        evaluate_files(submission, submission, (350, 525), (1400, 2100))
    message = str(info.value)
    assert message.startswith(f"{submission}: ") and "pass --pred-shape H W with their real size" in message
    assert "smaller than 1400x2100" in message


def test_train_csv_is_read_at_its_images_size_and_no_hint_names_a_size(tiny_data, tmp_path):
    import pandas as pd
    from click.testing import CliRunner

    from cloudpipe.cli import main
    from cloudpipe.core.masks import resize_nearest
    from cloudpipe.core.rle import mask2rle, rle2mask
    from cloudpipe.data.kaggle import read_train
    from tests.conftest import SUBMISSION_SHAPE

    train = read_train(tiny_data)  # 64 x 96 images, masks at that size
    exact = tmp_path / "exact.csv"  # the truth itself at the submission size: Dice 1
    rows = [(label, mask2rle(resize_nearest(rle2mask(rle, (64, 96)), SUBMISSION_SHAPE)))
            for label, rle in zip(train["Image_Label"], train["EncodedPixels"])]
    pd.DataFrame(rows, columns=["Image_Label", "EncodedPixels"]).to_csv(exact, index=False)
    result = CliRunner().invoke(main, ["evaluate", "--truth", str(tiny_data / "train.csv"), "--pred", str(exact)])
    assert result.exit_code == 0, result.output
    assert "mean  1.0000" in result.stdout
    copy = tmp_path / "truth.csv"  # not a data folder's train.csv: read at the size given, refused
    copy.write_bytes((tiny_data / "train.csv").read_bytes())
    refused = CliRunner().invoke(main, ["evaluate", "--truth", str(copy), "--pred", str(exact), "--truth-shape", "1400", "2100"])
    assert refused.exit_code == 2 and "with their real size" in refused.stderr
    assert "pass --truth-shape 350 525" not in refused.stderr  # following that would score 64 x 96 masks wrong


def test_a_test_truth_is_read_at_the_submission_size_as_report_reads_it(tiny_data, tmp_path):
    """``synth``'s (and clouds350's) ``test_truth.csv`` is at 350 x 525: ``evaluate`` needs no
    ``--truth-shape`` for it, as ``report`` does not; a data folder's ``train.csv`` stays at its images' size."""
    from cloudpipe.pipeline.evaluate import default_truth_shape
    from tests.conftest import SUBMISSION_SHAPE

    truth = tiny_data / "test_truth.csv"
    assert default_truth_shape(truth) == SUBMISSION_SHAPE
    assert default_truth_shape(tiny_data / "train.csv") == (64, 96)
    assert evaluate_files(truth, truth, None, SUBMISSION_SHAPE).table["mean"] == 1.0
