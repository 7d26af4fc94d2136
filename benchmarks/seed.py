"""The seed notebooks' code, copied faithfully: the baselines cloudpipe is measured against.

These are the classic loop-based implementations used by the seed notebooks of the
"Understanding Clouds from Satellite Images" competition. They are kept *as they were* on
purpose -- do not "improve", vectorise or fix them: a benchmark against a tuned baseline says
nothing. (Only the layout, names and this docstring are ours.) The seed's data loader and
inference will be added here later for the other benchmarks.
"""

from __future__ import annotations

import numpy as np


def rle_decode(mask_rle, shape=(1400, 2100)):
    """Seed decode: parse the pairs, then set ``img[lo:hi] = 1`` in a Python loop over runs."""
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends):
        img[lo:hi] = 1
    return img.reshape(shape, order="F")


def mask2rle(img):
    """Seed encode: transpose-flatten, pad, diff, then ``" ".join`` of ``str()`` per number."""
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)
