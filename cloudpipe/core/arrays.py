"""Checks of the array arguments library functions take: a value a function cannot read is
refused in one :class:`~cloudpipe.core.errors.BadType` (a ``TypeError``) or
:class:`~cloudpipe.core.errors.BadValue` (a ``ValueError``) naming the argument, never turned
into a silently wrong answer (a NaN that compares False, a 0.3 "mask" read as inside)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cloudpipe.core.errors import BadType, BadValue


def _where(value: object, array: np.ndarray, bad: np.ndarray) -> str:
    """Where the first True of ``bad`` lies: a frame's row and column labels, else the array index."""
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    if isinstance(value, pd.DataFrame) and array.ndim == 2:
        return f"row {value.index[first[0]]!r}, column {value.columns[first[1]]!r}"
    return f"index {first}" if len(first) != 1 else f"index {first[0]}"


def check_numbers(value: object, name: str, *, low: float | None = None, high: float | None = None,
                  binary: bool = False, fix: str = "") -> np.ndarray:
    """``value`` (an array, a frame, nested lists) as an array of finite numbers, each in
    [``low``, ``high``] where given, or each 0 or 1 with ``binary``; a refusal names the
    argument ``name`` and ends with ``fix``, what to do instead (e.g. how to threshold).

    Raises:
        BadType: not numbers (strings, objects, mixed columns). BadValue: NaN or infinite
            values, values outside the range, or non-0/1 values with ``binary``; the message
            quotes the first one and where it is.
    """
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise BadType(f"{name} must be numbers, got dtype {array.dtype}")
    fix = f"; {fix}" if fix else ""
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            raise BadValue(f"{name} holds {array[bad][0].item()} at {_where(value, array, bad)}: a number is needed{fix}")
    if binary:
        bad = (array != 0) & (array != 1)
        if bad.any():
            raise BadValue(f"{name} must be 0/1 (or bool), holds {array[bad][0].item()!r} at {_where(value, array, bad)}{fix}")
    if low is not None or high is not None:
        bad = (array < (-np.inf if low is None else low)) | (array > (np.inf if high is None else high))
        if bad.any():
            raise BadValue(f"{name} holds {array[bad][0].item()!r} at {_where(value, array, bad)}, outside "
                           f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]{fix}")
    return array
