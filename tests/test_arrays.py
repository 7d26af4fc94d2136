"""The shared checks of array arguments: numbers, finite, in range or 0/1, refusals naming the argument and where."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cloudpipe.core.arrays import check_numbers


def test_numbers_in_range_come_back_as_an_array():
    assert check_numbers([[0, 1], [1, 0]], "m", binary=True).tolist() == [[0, 1], [1, 0]]
    assert check_numbers(np.array([0.0, 0.5, 1.0]), "p", low=0, high=1).dtype == np.float64


def test_a_refusal_names_the_argument_the_value_and_where_it_is():
    with pytest.raises(ValueError, match=r"^p holds nan at index 2: a number is needed; fix it$"):
        check_numbers([0.1, 0.2, np.nan], "p", fix="fix it")
    with pytest.raises(ValueError, match=r"^p holds 2 at index \(1, 0\), outside \[0, 1\]$"):
        check_numbers([[0, 1], [2, 0]], "p", low=0, high=1)
    with pytest.raises(ValueError, match=r"^p holds -3 at index 0, outside \[0, inf\]$"):
        check_numbers([-3], "p", low=0)
    frame = pd.DataFrame({"x": [0.5, 0.5], "y": [0.5, -1.0]}, index=["a", "b"])
    with pytest.raises(ValueError, match=r"^f holds -1.0 at row 'b', column 'y', outside"):
        check_numbers(frame, "f", low=0, high=1)
    with pytest.raises(ValueError, match=r"^m must be 0/1 \(or bool\), holds 2 at index 1$"):
        check_numbers([1, 2], "m", binary=True)
    with pytest.raises(TypeError, match=r"^m must be numbers, got dtype object$"):
        check_numbers([1, None], "m")
