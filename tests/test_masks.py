import cv2
import numpy as np
import pytest

from cloudpipe.core.masks import panel_grid, remove_small_components, resize_nearest

SHAPE_PAIRS = [
    ((1400, 2100), (350, 525)),  # truth -> submission, the case evaluate relies on
    ((350, 525), (1400, 2100)),
    ((1400, 2100), (10, 10)),  # non-integer ratios where exact integer division differs from OpenCV
    ((700, 1050), (10, 10)),
    ((350, 525), (10, 10)),
    ((64, 96), (350, 525)),  # synth's test truth: upsampled
    ((350, 525), (64, 96)),
    ((4, 6), (2, 3)),
    ((7, 5), (3, 11)),
    ((13, 17), (17, 13)),
    ((1, 1), (5, 4)),
    ((5, 4), (1, 1)),
    ((100, 3), (33, 7)),
]


def _random_pairs(count, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (tuple(int(v) for v in rng.integers(1, 300, 2)), tuple(int(v) for v in rng.integers(1, 300, 2)))
        for _ in range(count)
    ]


@pytest.mark.parametrize("source,target", SHAPE_PAIRS + _random_pairs(30))
def test_resize_nearest_matches_opencv(source, target):
    rng = np.random.default_rng(sum(source) * 1000 + sum(target))
    mask = rng.integers(0, 2, size=source, dtype=np.uint8)
    expected = cv2.resize(mask, (target[1], target[0]), interpolation=cv2.INTER_NEAREST)
    got = resize_nearest(mask, target)
    assert got.shape == target
    assert got.dtype == mask.dtype
    np.testing.assert_array_equal(got, expected)


def test_resize_nearest_same_shape_is_identity_and_handles_fortran_order():
    mask = np.asfortranarray(np.random.default_rng(1).integers(0, 2, (6, 9), dtype=np.uint8))
    np.testing.assert_array_equal(resize_nearest(mask, (6, 9)), mask)
    expected = cv2.resize(np.ascontiguousarray(mask), (4, 3), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(resize_nearest(mask, (3, 4)), expected)


def test_resize_nearest_hand_case():
    # 4x6 -> 2x3 keeps rows 0, 2 and columns 0, 2, 4.
    mask = np.arange(24).reshape(4, 6)
    np.testing.assert_array_equal(resize_nearest(mask, (2, 3)), [[0, 2, 4], [12, 14, 16]])


def _components_case():
    mask = np.zeros((8, 8), np.uint8)
    mask[0:3, 0:3] = 1  # 9 pixels
    mask[5, 5] = mask[6, 6] = 1  # diagonal pair: one 8-connected component of 2 pixels
    mask[0, 7] = 1  # a single pixel
    return mask


def test_remove_small_components_hand_case():
    mask = _components_case()
    block = np.zeros_like(mask)
    block[0:3, 0:3] = 1
    pair = np.zeros_like(mask)
    pair[5, 5] = pair[6, 6] = 1

    np.testing.assert_array_equal(remove_small_components(mask, 3), block)
    np.testing.assert_array_equal(remove_small_components(mask, 9), block)
    # 8-connectivity: the diagonal pair counts as 2 pixels and survives min_size=2.
    np.testing.assert_array_equal(remove_small_components(mask, 2), block + pair)
    assert remove_small_components(mask, 10).sum() == 0
    np.testing.assert_array_equal(remove_small_components(mask, 1), mask)
    np.testing.assert_array_equal(remove_small_components(mask, 0), mask)
    assert mask.sum() == 12  # the input is not modified


def test_remove_small_components_empty_and_bool():
    assert remove_small_components(np.zeros((5, 5), np.uint8), 4).sum() == 0
    out = remove_small_components(_components_case().astype(bool), 3)
    assert out.shape == (8, 8)
    assert int(out.sum()) == 9


@pytest.mark.parametrize("count, grid", [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (4, (2, 2)), (5, (2, 3)), (9, (3, 3))])
def test_panels_are_laid_out_nearly_square(count, grid):
    assert panel_grid(count) == grid
