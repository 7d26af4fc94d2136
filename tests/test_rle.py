import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cloudpipe.core.errors import RLEError
from cloudpipe.core.rle import mask2rle, parse_rle, rle2mask


def reference_encode(mask: np.ndarray) -> str:
    """Pixel-by-pixel definition: 1-indexed starts, column-major order."""
    flat = [int(v != 0) for v in mask.T.reshape(-1)]
    runs, i = [], 0
    while i < len(flat):
        if flat[i]:
            j = i
            while j < len(flat) and flat[j]:
                j += 1
            runs += [i + 1, j - i]
            i = j
        else:
            i += 1
    return " ".join(map(str, runs))


def test_column_major_one_indexed():
    mask = np.zeros((3, 4), np.uint8)
    mask[0, 0] = 1  # pixel 1
    mask[2, 0] = mask[0, 1] = 1  # pixels 3 and 4: one run crossing the column boundary
    mask[2, 3] = 1  # last pixel, 12
    assert mask2rle(mask) == "1 1 3 2 12 1"
    assert (rle2mask("1 1 3 2 12 1", (3, 4)) == mask).all()


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((5, 7), np.uint8),
        np.ones((5, 7), np.uint8),
        np.eye(6, 4, dtype=np.uint8),
        np.pad(np.ones((1, 1), np.uint8), ((0, 4), (0, 6))),  # first pixel only
        np.pad(np.ones((1, 1), np.uint8), ((4, 0), (6, 0))),  # last pixel only
        np.ones((1, 1), np.uint8),
    ],
)
def test_edge_masks_round_trip(mask):
    rle = mask2rle(mask)
    assert rle == reference_encode(mask)
    decoded = rle2mask(rle, mask.shape)
    assert decoded.dtype == np.uint8 and decoded.shape == mask.shape
    assert (decoded == mask).all()


def test_empty_mask_is_empty_string():
    assert mask2rle(np.zeros((4, 4))) == ""
    assert rle2mask("", (4, 4)).sum() == 0


@settings(max_examples=300, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 1)))
def test_round_trip_property(mask):
    rle = mask2rle(mask)
    assert rle == reference_encode(mask)
    assert (rle2mask(rle, mask.shape) == mask).all()


def test_round_trip_random_blocky_masks_at_submission_size():
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = np.zeros((350, 525), np.uint8)
        for _ in range(rng.integers(0, 4)):
            r, c = rng.integers(0, 350), rng.integers(0, 525)
            mask[r : r + rng.integers(1, 200), c : c + rng.integers(1, 300)] = 1
        assert (rle2mask(mask2rle(mask), mask.shape) == mask).all()


def test_nonbinary_and_bool_masks_encode_nonzero():
    mask = np.array([[0, 255], [3, 0]])
    assert mask2rle(mask) == "2 2"
    assert mask2rle(mask.astype(bool)) == "2 2"


@pytest.mark.parametrize(
    "rle, found",
    [
        ("+100 +3", "'+' at character 1"),
        ("1\t2", "'\\t' at character 2"),
        ("1\xa02", "'\\xa0' at character 2"),
        ("1 2\n", "'\\n' at character 4"),
        ("1 \u0662", "'\u0662' at character 3"),  # a non-ASCII digit
        (" 1 2", "a leading space"),
        ("1 2 ", "a trailing space"),
        ("  ", "a leading space"),  # only "" is an empty mask
        ("1  2", "two spaces in a row at character 2"),
    ],
)
def test_lenient_rle_is_refused(rle, found):
    # Kaggle's checker may refuse these, and predict copies kept masks verbatim.
    message = f"RLE must be digits separated by single spaces; found {found}"
    with pytest.raises(RLEError) as info:
        parse_rle(rle, (2, 2))
    assert str(info.value) == message and "\n" not in str(info.value)
    with pytest.raises(RLEError, match="single spaces"):
        rle2mask(rle, (2, 2))


@pytest.mark.parametrize(
    "rle, message",
    [
        ("1 x", "single spaces; found 'x'"),
        ("1.5 2", "single spaces; found '.'"),
        ("-1 2", "single spaces; found '-'"),
        ("1 2 3", "odd number"),
        ("0 2", "start 0 is below 1"),
        ("1 0", "length 0 is below 1"),
        ("5 1 3 1", "not strictly increasing"),
        ("5 1 5 1", "not strictly increasing"),
        ("1 3 2 1", "overlap"),
        ("12 2", "ends past pixel 12"),
    ],
)
def test_invalid_rle(rle, message):
    with pytest.raises(RLEError, match=message):
        rle2mask(rle, (3, 4))
    with pytest.raises(ValueError):  # RLEError is a ValueError for library users
        parse_rle(rle, (3, 4))


def test_touching_runs_are_valid():
    assert rle2mask("1 2 3 2", (2, 2)).sum() == 4


def test_mask_must_be_2d():
    with pytest.raises(ValueError, match="2-D"):
        mask2rle(np.zeros((2, 2, 2)))


def test_numbers_past_int64_are_out_of_bounds_not_a_crash():
    with pytest.raises(RLEError, match="ends past pixel 12"):
        rle2mask("9223372036854775800 100", (3, 4))
    with pytest.raises(RLEError, match="ends past pixel 12"):
        rle2mask("99999999999999999999999 1", (3, 4))


def test_lone_sign_is_not_a_number():
    with pytest.raises(RLEError, match="found '-' at character 3"):
        rle2mask("1 - 3 1", (3, 4))


def test_fortran_ordered_masks_encode_the_same():
    rng = np.random.default_rng(1)
    for _ in range(50):
        mask = (rng.random((7, 9)) < 0.4).astype(np.uint8)
        assert mask2rle(np.asfortranarray(mask)) == mask2rle(mask) == reference_encode(mask)
        decoded = rle2mask(mask2rle(mask), mask.shape)  # Fortran-ordered view
        assert mask2rle(decoded) == mask2rle(mask)


def test_pandas_missing_values_are_empty_masks_and_anything_else_not_text_is_refused():
    """An empty CSV cell (NaN, pd.NA) is an empty mask, as "" is; None or a number is a bug
    (it used to decode as an empty mask too), refused with the value quoted."""
    import pandas as pd

    for missing in (float("nan"), np.float64("nan"), pd.NA, ""):
        assert not rle2mask(missing, (4, 6)).any() and rle2mask(missing, (4, 6)).shape == (4, 6)
    for bad in (None, 5, b"1 2"):
        with pytest.raises(TypeError, match=f"got {type(bad).__name__} {bad!r}"):
            rle2mask(bad, (4, 6))
    for shape in ((0, 0), (-1, 5), (4,), (4.0, 6)):
        with pytest.raises(ValueError, match="two whole numbers >= 1"):
            rle2mask("1 2", shape)


def test_a_mask_of_nan_is_refused_not_encoded_as_full():
    mask = np.zeros((3, 4))
    mask[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        mask2rle(mask)
    with pytest.raises(TypeError, match="dtype <U1"):
        mask2rle(np.array([["a"]]))
    assert mask2rle(np.array([[0.0, 0.7]])) == "2 1"  # finite floats: non-zero is inside, as documented


def test_a_shape_larger_than_an_image_may_be_is_refused_before_allocating():
    with pytest.raises(ValueError, match="at most 47,040,000 pixels, got \\(100000, 100000\\)"):
        rle2mask("", (100000, 100000))


# --- row order (a profile's rle_order: row) ---------------------------------------------------------


def test_row_order_by_hand():
    mask = np.array([[0, 1, 1],
                     [1, 0, 0]], np.uint8)
    # Row-major pixels: row 0 is 1 2 3, row 1 is 4 5 6; pixels 2, 3 and 4 are set: one run of 3.
    assert mask2rle(mask, "row") == "2 3"
    # Column-major: column 0 is 1 2, column 1 is 3 4, column 2 is 5 6; pixels 2, 3 and 5 are set.
    assert mask2rle(mask, "column") == "2 2 5 1"
    decoded = rle2mask("2 3", (2, 3), "row")
    assert decoded.tolist() == mask.tolist() and decoded.flags.c_contiguous


@settings(max_examples=200, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 1)))
def test_row_order_round_trip_is_the_column_order_of_the_transpose(mask):
    rle = mask2rle(mask, "row")
    assert rle == reference_encode(mask.T)
    assert rle == mask2rle(np.asfortranarray(mask), "row")  # however the mask lies in memory
    assert (rle2mask(rle, mask.shape, "row") == mask).all()
    parse_rle(rle, mask.shape)  # validation does not depend on the order


def test_the_order_follows_the_active_profile():
    from cloudpipe.core.profile import packaged, use_profile

    mask = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)
    with use_profile(packaged("clouds").model_copy(update={"rle_order": "row"})):
        assert mask2rle(mask) == "2 3" and rle2mask("2 3", (2, 3)).tolist() == mask.tolist()
    assert mask2rle(mask) == "2 2 5 1" and rle2mask("2 2 5 1", (2, 3)).tolist() == mask.tolist()


def test_an_unknown_order_is_refused():
    from cloudpipe.core.errors import BadValue

    with pytest.raises(BadValue, match="order must be 'column' or 'row', got 'diagonal'"):
        mask2rle(np.ones((2, 2)), "diagonal")
    with pytest.raises(BadValue, match="order must be"):
        rle2mask("1 1", (2, 2), "Row")
