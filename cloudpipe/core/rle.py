"""Kaggle run-length encoding: 1-indexed ``start length`` pairs over column-major pixels (or
row-major ones, for a profile whose ``rle_order`` is ``row``: the row-major RLE of a mask is the
column-major RLE of its transpose, which numpy makes as a view, so both orders cost the same).

Both directions are vectorised numpy: no Python loop over runs or pixels. Where the time goes
(measured against the seed notebooks' loops in ``python -m benchmarks speed --only rle``):

- decode: two numpy calls are nearly all of it: ``np.fromstring`` parsing the text and one
  ``np.repeat`` of alternating 0/1 runs (reshaped column-major without a copy). Validation is
  one regex ``fullmatch`` of the strict syntax (digits, single spaces) and two reductions; the
  precise error message is only worked out once they have failed.
- encode: the changes of a mask are found on 8-byte words first (the image compared with
  itself one row further on, then ``nonzero`` over an eighth as many elements), so the image
  is read once and nothing of its size is written. The numbers are formatted through a
  4-digit lookup table and one ``bytes.translate``, not one ``str()`` per number.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np

from cloudpipe.core.constants import MAX_PIXELS
from cloudpipe.core.errors import BadType, BadValue, RLEError
from cloudpipe.core.profile import active

Order = Literal["column", "row"]
"""How pixels are numbered: down each column first (Kaggle's), or along each row first."""


def _order(order: Order | None) -> Order:
    """``order``, or the active profile's ``rle_order`` when None; anything else is a BadValue."""
    if order is None:
        return active().rle_order
    if order not in ("column", "row"):
        raise BadValue(f"order must be 'column' or 'row', got {order!r}")
    return order

# --- encode ---------------------------------------------------------------------------------


def _changes(flat: np.ndarray, shift: int) -> np.ndarray:
    """Sorted indices ``i`` where ``flat[i] != 0`` differs from ``flat[i + shift] != 0``.

    ``flat`` is a 1-D array of one-byte elements. Changes are sparse in a mask, so the two
    byte ranges are compared as 8-byte words, that result is scanned 8 words at a time, and
    only the few words that differ are looked at byte by byte (where the ``!= 0`` test also
    drops changes between two different non-zero values).
    """
    n = flat.size - shift
    if n <= 0:
        return np.empty(0, np.int64)
    words = n // 8
    stop = words * 8
    a = flat[:stop].view(np.uint64)
    b = flat[shift : shift + stop].view(np.uint64)
    differs = np.zeros(-(-words // 8) * 8, bool)  # padded to whole blocks of 8 words
    np.not_equal(a, b, out=differs[:words])
    blocks = differs.view(np.uint64)
    hot = np.flatnonzero(blocks != 0)  # blocks of 8 words with a change
    hot = _bytes_to_index(hot, blocks[hot].view(bool))  # words with a change
    hot = _bytes_to_index(hot, (a[hot].view(np.uint8) != 0) != (b[hot].view(np.uint8) != 0))
    if stop == n:
        return hot
    # The last few (< 8) bytes, which fill no whole word.
    tail = np.flatnonzero((flat[stop:n] != 0) != (flat[stop + shift :] != 0)) + stop
    return np.concatenate((hot, tail))


def _bytes_to_index(words: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Indices ``8 * words[k] + j`` of the set ``flags[8 * k + j]`` (8 flags per word)."""
    where = np.flatnonzero(flags)
    return words[where >> 3] * 8 + (where & 7)


def mask2rle(mask: np.ndarray, order: Order | None = None) -> str:
    """Encode a mask (H, W; any non-zero pixel is "in the mask") as Kaggle RLE:
    ``"start length start length ..."`` with 1-indexed column-major starts; ``""`` when empty.
    ``order``: ``row`` numbers pixels along rows instead (None: the active profile's ``rle_order``).

    Works on the array as it lies in memory: run boundaries are found within columns
    (row-to-row changes) and across column ends, then put in column-major order, so no
    transposed copy of the full image is made. (A Fortran-ordered mask, such as
    :func:`rle2mask` returns, is scanned in column-major order directly.)
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype.kind not in "biuf":
        raise BadType(f"mask must be numbers (0: outside, other: inside), got dtype {mask.dtype}")
    if mask.dtype.kind == "f" and not np.isfinite(mask).all():
        raise BadValue("mask holds NaN or infinite values: neither inside nor outside the mask")
    if _order(order) == "row":
        mask = mask.T  # a view: row-major pixels of the mask are column-major ones of its transpose
    if mask.dtype.itemsize != 1 or mask.dtype.kind not in "biu":
        mask = mask != 0  # one-byte 0/1 values: bytes can be compared directly
    height, width = mask.shape
    if height == 0 or width == 0:
        return ""
    if mask.flags.f_contiguous and not mask.flags.c_contiguous:
        flat = mask.T.reshape(-1).view(np.uint8)  # column-major pixel order, no copy
        inner = _changes(flat, 1) + 1
        first, last = [int(flat[0] != 0)], [int(flat[-1] != 0)]
        runs = np.concatenate((np.zeros(first, np.int64), inner, np.full(last, flat.size)))
    else:
        flat = np.ascontiguousarray(mask).reshape(-1).view(np.uint8)
        # A change between rows r and r + 1 of column c, at row-major index i = r*W + c, is a
        # run boundary at column-major index c*H + r + 1. And c*H + r = i*H mod (H*W - 1),
        # since H*W = 1 there; r < H - 1 keeps c*H + r below H*W - 1, so the mod is exact.
        inner = _changes(flat, width) * height % (height * width - 1) + 1
        # Between the bottom of column c - 1 and the top of column c (and the two image ends).
        top = np.zeros(width + 1, bool)
        top[:-1] = flat[:width] != 0
        bottom = np.zeros(width + 1, bool)
        bottom[1:] = flat[-width:] != 0
        edges = np.flatnonzero(top != bottom) * height
        runs = np.sort(np.concatenate((inner, edges)))
    if runs.size == 0:
        return ""
    runs[1::2] -= runs[::2]
    runs[::2] += 1
    return _format(runs, largest=height * width)


_PAD = ord("x")  # stands for a leading zero; deleted from the text at the end
_DIGITS = np.arange(10_000)[:, None] // np.array([1000, 100, 10, 1]) % 10 + ord("0")
_LEADING = np.arange(10_000)[:, None] < np.array([1000, 100, 10, 1])
_CHUNK = _DIGITS.astype(np.uint8).view(np.uint32).ravel()  # 42 -> "0042", as 4 bytes
_LEAD = np.where(_LEADING, _PAD, _DIGITS).astype(np.uint8).view(np.uint32).ravel()  # "xx42"
_CHUNK.flags.writeable = _LEAD.flags.writeable = False


def _format(values: np.ndarray, largest: int | None = None) -> str:
    """``" ".join(map(str, values))`` for positive integers, without a Python loop over them.

    Every number becomes a field of 4-digit chunks from the lookup tables, leading zeros
    marked; the field is one digit wider than the largest number, so its first byte is always
    a mark and becomes the separating space. One ``bytes.translate`` then deletes the marks.
    ``largest``: an upper bound on ``values`` if known (else their maximum is taken).
    """
    if largest is None:
        largest = int(values.max())
    chunks = 1
    while largest >= 10 ** (4 * chunks - 1):
        chunks += 1
    parts = []
    rest = values
    for _ in range(chunks - 1):  # a loop over 4-digit chunks, not over numbers
        rest, chunk = np.divmod(rest, 10_000)
        parts.append(chunk)
    parts.append(rest)
    parts.reverse()  # most significant first
    fields = np.empty((values.size, chunks), np.uint32)
    fields[:, 0] = _LEAD[parts[0]]
    started = parts[0] > 0
    for j in range(1, chunks):
        fields[:, j] = np.where(started, _CHUNK[parts[j]], _LEAD[parts[j]])
        if j < chunks - 1:
            started |= parts[j] > 0
    fields.view(np.uint8).reshape(values.size, 4 * chunks)[:, 0] = ord(" ")
    return fields.tobytes().translate(None, b"x")[1:].decode("ascii")


# --- decode ---------------------------------------------------------------------------------

_SYNTAX = re.compile(r"[0-9]+(?: [0-9]+)*")
"""Strict Kaggle RLE text: ASCII digits separated by single ASCII spaces, nothing else."""


def _syntax_problem(text: str) -> str:
    """What makes ``text`` fail :data:`_SYNTAX` (worked out only once it has failed)."""
    bad = re.search(r"[^0-9 ]", text)
    if bad:
        found = f"{bad.group()!r} at character {bad.start() + 1}"
    elif text.startswith(" "):
        found = "a leading space"
    elif text.endswith(" "):
        found = "a trailing space"
    else:
        found = f"two spaces in a row at character {text.index('  ') + 1}"
    return f"RLE must be digits separated by single spaces; found {found}"


def _parse(text: str) -> np.ndarray:
    """The numbers of non-empty RLE text as int64 (too large ones saturated); text that is not
    strict RLE syntax, or an odd number of tokens, is an RLEError."""
    if not _SYNTAX.fullmatch(text):  # one regex; the numbers then parse exactly
        raise RLEError(_syntax_problem(text))
    values = np.fromstring(text, dtype=np.int64, sep=" ")
    if values.size % 2:
        raise RLEError(f"RLE has an odd number of tokens ({values.size})")
    return values


def _explain(text: str, shape: tuple[int, int]) -> RLEError:
    """The error for RLE that failed the fast checks, in a fixed order of precedence.

    Works on exact Python integers (object arrays), so that numbers near or past the int64
    limit cannot overflow into a misleading message.
    """
    exact = [int(token) for token in text.split(" ")]  # strict syntax: digits only
    starts = np.array(exact[0::2], dtype=object)
    lengths = np.array(exact[1::2], dtype=object)
    ends = starts + lengths  # 1-indexed, exclusive
    bad = np.flatnonzero(lengths < 1)
    if bad.size:
        return RLEError(f"RLE length {lengths[bad[0]]} is below 1")
    bad = np.flatnonzero(starts < 1)
    if bad.size:
        return RLEError(f"RLE start {starts[bad[0]]} is below 1")
    bad = np.flatnonzero(starts[1:] < ends[:-1])
    if bad.size:
        # Lengths are >= 1, so "no overlap" implies "strictly increasing"; say which broke.
        i = int(bad[0])
        if starts[i + 1] <= starts[i]:
            return RLEError(f"RLE starts not strictly increasing ({starts[i]} then {starts[i + 1]})")
        return RLEError(
            f"RLE runs overlap (run at {starts[i]} of length {lengths[i]} "
            f"reaches past the next start {starts[i + 1]})"
        )
    size = shape[0] * shape[1]
    return RLEError(
        f"RLE run at {starts[-1]} of length {lengths[-1]} ends past pixel {size} "
        f"of a {shape[0]}x{shape[1]} mask"
    )


def _run_counts(text: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate non-empty RLE text: the numbers as written, and the lengths of the
    alternating 0/1 runs of the flat mask, ``[gap, run, gap, run, ..., tail gap]`` (summing to ``H * W``)."""
    values = _parse(text)
    size = shape[0] * shape[1]
    # Run bounds 1, s0, e0, s1, e1, ..., size + 1 (1-indexed, e = s + length, exclusive end).
    bounds = np.empty(values.size + 2, np.int64)
    bounds[0] = 1
    bounds[1:-1] = values
    bounds[2:-1:2] += values[0::2]
    bounds[-1] = size + 1
    counts = np.subtract(bounds[1:], bounds[:-1])
    # Valid RLE <=> every number >= 1 and every count in [0, size]. A start below 1, unsorted
    # starts, an overlap or a run past the end make a count negative, which the unsigned view
    # turns into a huge one. The upper bound matters too: a sum past int64 wraps round, and
    # could otherwise leave plausible-looking counts (and np.repeat crash the process). With
    # all counts in [0, size] they sum to exactly size, so no sum has wrapped.
    if values.min() < 1 or counts.view(np.uint64).max() > size:
        raise _explain(text, shape)
    return values, counts


def parse_rle(rle: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate RLE text into 0-indexed ``(starts, lengths)`` arrays.

    ``""`` is an empty mask; anything else must be strict Kaggle RLE, which Kaggle's checker
    accepts: ASCII digits separated by single ASCII spaces (no signs, tabs, newlines,
    non-breaking spaces, leading, trailing or doubled spaces).

    Raises:
        RLEError: odd token count, start or length < 1, starts not strictly increasing,
            overlapping runs, or runs past ``H * W``.
    """
    if not rle:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    values, _ = _run_counts(rle, shape)
    return values[0::2] - 1, values[1::2]


_ALTERNATING = np.tile(np.array([0, 1], np.uint8), 4096)  # gap, run, gap, run, ...
_ALTERNATING.flags.writeable = False


def _is_missing(value: object) -> bool:
    """Whether ``value`` is pandas' missing value of a CSV cell (float NaN, ``pd.NA``)."""
    return (isinstance(value, float) and value != value) or type(value).__name__ == "NAType"


def check_shape(shape: object) -> tuple[int, int]:
    """``shape`` as ``(H, W)`` if it is two whole numbers >= 1, of at most
    :data:`~cloudpipe.core.competition.MAX_PIXELS` pixels in all; anything else is a BadValue quoting it."""
    try:
        height, width = shape  # type: ignore[misc]
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in (height, width))
        ok = ok and int(height) * int(width) <= MAX_PIXELS
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise BadValue(f"shape must be (H, W), two whole numbers >= 1 of at most {MAX_PIXELS:,} pixels, got {shape!r}")
    return int(height), int(width)


def rle2mask(rle: str, shape: tuple[int, int], order: Order | None = None) -> np.ndarray:
    """Decode Kaggle RLE into a uint8 0/1 mask of ``shape`` (H, W), Fortran-ordered (a view, no
    transpose copy; C-ordered for ``order`` ``row``, which numbers pixels along rows; None: the
    active profile's ``rle_order``). ``""`` and pandas' missing value (float NaN or ``pd.NA``, what ``read_csv``
    gives an empty cell) mean an empty mask; anything else that is not text, ``None`` included,
    is refused (a BadType): it is more likely a bug than an empty mask. RLE not valid for
    ``shape`` is an RLEError (:func:`parse_rle`), a bad ``shape`` a BadValue (:func:`check_shape`).
    """
    shape = check_shape(shape)
    layout = "C" if _order(order) == "row" else "F"
    if not isinstance(rle, str):
        if not _is_missing(rle):
            raise BadType(f"rle must be RLE text ('' or NaN: an empty mask), got {type(rle).__name__} {rle!r}")
        rle = ""
    if not rle:
        return np.zeros(shape, dtype=np.uint8, order=layout)
    _, counts = _run_counts(rle, shape)
    if counts.size <= _ALTERNATING.size:
        pattern = _ALTERNATING[: counts.size]
    else:
        pattern = (np.arange(counts.size) % 2).astype(np.uint8)
    return np.repeat(pattern, counts).reshape(shape, order=layout)
