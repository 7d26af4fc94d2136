
import numpy as np
import pandas as pd
import pytest

from cloudpipe.core.metric import accuracy, dice, dice_score, dice_table, pair_stats
from tests.conftest import CLASSES

# Pixel numbers of a 2x3 mask (column-major, 1-indexed):   1 3 5
#                                                           2 4 6


def wide(rows: dict[str, tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(CLASSES)).rename_axis("image")


TRUTH = {"a": ("", "", "1 1", "3 2"), "b": ("1 6", "2 3", "1 1 6 1", "")}
PRED = {"a": ("", "1 2", "1 2", ""), "b": ("1 6", "3 3", "5 2", "")}
# a: empty/empty = 1; empty truth, 2 predicted = 0; {1} vs {1,2} = 2*1/(1+2); truth {3,4}, empty = 0
# b: identical = 1; {2,3,4} vs {3,4,5} = 2*2/6; {1,6} vs {5,6} = 2*1/4; empty/empty = 1
EXPECTED_DICE = np.array([[1, 0, 2 / 3, 0], [1, 2 / 3, 1 / 2, 1]])


def test_pair_stats_hand_computed():
    stats = pair_stats(wide(TRUTH), wide(PRED), (2, 3), (2, 3))
    assert stats.images == ["a", "b"]
    np.testing.assert_array_equal(stats.intersection, [[0, 0, 1, 0], [6, 2, 1, 0]])
    np.testing.assert_array_equal(stats.pred_area, [[0, 2, 2, 0], [6, 3, 2, 0]])
    np.testing.assert_array_equal(stats.truth_area, [[0, 0, 1, 2], [6, 3, 2, 0]])
    np.testing.assert_allclose(stats.dice(), EXPECTED_DICE)
    np.testing.assert_array_equal(stats.blanked_dice(), [[1, 1, 0, 0], [0, 0, 0, 1]])


def test_pair_stats_follows_prediction_order():
    truth = wide(TRUTH)
    pred = wide(PRED).loc[["b", "a"]]
    stats = pair_stats(truth, pred, (2, 3), (2, 3))
    assert stats.images == ["b", "a"]
    np.testing.assert_allclose(stats.dice(), EXPECTED_DICE[::-1])


def test_pair_stats_columns_by_name():
    shuffled = wide(PRED)[["Sugar", "Gravel", "Fish", "Flower"]]
    np.testing.assert_allclose(pair_stats(wide(TRUTH), shuffled, (2, 3), (2, 3)).dice(), EXPECTED_DICE)


def test_truth_resized_nearest():
    # Truth at 4x6 (pixel = col*4 + row + 1), prediction at 2x3: nearest keeps rows 0, 2 and
    # columns 0, 2, 4. Truth pixel 1 = (0,0) -> 1; 19 = (2,4) -> (1,2) = 6; 6 = (1,1) and
    # 24 = (3,5) are dropped; "1 4" (column 0) -> rows 0 and 2 of column 0 -> pixels 1, 2.
    truth = wide({"c": ("1 1 19 1", "6 1", "24 1", "1 4")})
    pred = wide({"c": ("1 1", "", "6 1", "1 2")})
    stats = pair_stats(truth, pred, (4, 6), (2, 3))
    np.testing.assert_array_equal(stats.truth_area, [[2, 0, 0, 2]])
    np.testing.assert_array_equal(stats.intersection, [[1, 0, 0, 2]])
    np.testing.assert_allclose(stats.dice(), [[2 / 3, 1, 0, 1]])
    np.testing.assert_array_equal(stats.blanked_dice(), [[0, 1, 1, 0]])


def test_dice_table():
    table = dice_table(EXPECTED_DICE)
    assert list(table) == [*CLASSES, "mean"]
    assert table["Fish"] == pytest.approx(1)
    assert table["Flower"] == pytest.approx(1 / 3)
    assert table["Gravel"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert table["Sugar"] == pytest.approx(1 / 2)
    assert table["mean"] == pytest.approx((1 + 0 + 2 / 3 + 0 + 1 + 2 / 3 + 1 / 2 + 1) / 8)
    assert all(isinstance(v, float) for v in table.values())


def test_accuracy():
    probs = np.array([[0.9, 0.2, 0.5, 0.1], [0.4, 0.6, 0.49, 0.7], [0.5, 0.5, 0.5, 0.5]])
    labels = np.array([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]])
    # At 0.5 (a probability equal to the threshold counts as present):
    # predictions [[1,0,1,0],[0,1,0,1],[1,1,1,1]].
    np.testing.assert_allclose(accuracy(probs, labels), [1, 2 / 3, 2 / 3, 2 / 3])
    # Per-class thresholds [0.95, 0.1, 0.5, 0.8]: predictions [[0,1,1,0],[0,1,0,0],[0,1,1,0]].
    np.testing.assert_allclose(accuracy(probs, labels, np.array([0.95, 0.1, 0.5, 0.8])), [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(accuracy(probs, labels * 5, 0.0), labels.mean(axis=0))  # labels > 0 count


def test_dice_score_is_the_kaggle_formula():
    inter, pred, truth = np.array([0, 2, 0, 3]), np.array([0, 4, 5, 3]), np.array([0, 2, 0, 3])
    np.testing.assert_allclose(dice_score(inter, pred, truth), [1.0, 2 * 2 / 6, 0.0, 1.0])
    assert dice_score(np.zeros((2, 4, 3)), np.zeros((2, 4, 3)), np.ones((2, 4, 3))).shape == (2, 4, 3)


def test_dice_of_two_masks_and_of_class_stacks():
    a, b = np.zeros((4, 5), np.uint8), np.zeros((4, 5), bool)
    assert dice(a, b) == 1.0  # both empty
    a[0, :2], b[0, 1:4] = 1, True
    assert dice(a, b) == pytest.approx(2 * 1 / (2 + 3))
    stack = np.stack([a, np.zeros_like(a), a, np.ones_like(a)])
    assert dice(stack, stack).tolist() == [1.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"one shape .* got \(4, 5\) and \(5, 4\)"):
        dice(a, b.T)


@pytest.mark.parametrize("value, message", [(np.nan, r"b holds nan at index \(1, 2\)"), (np.inf, r"b holds inf at index \(1, 2\)"),
                                            (0.3, r"b must be 0/1 \(or bool\), holds 0.3 at index \(1, 2\); threshold"),
                                            (255, r"b must be 0/1 \(or bool\), holds 255\.0 at index \(1, 2\)")])
def test_dice_refuses_masks_that_are_not_0_1(value, message):
    """A NaN mask scored 0.0, an inf one 1.0, probabilities were read as masks."""
    a, b = np.zeros((3, 4)), np.zeros((3, 4))
    b[1, 2] = value
    with pytest.raises(ValueError, match=message):
        dice(a, b)
    with pytest.raises(TypeError, match="a must be numbers, got dtype <U1"):
        dice(np.full((3, 4), "1"), a)
