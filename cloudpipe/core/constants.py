"""Limits and model constants that hold for every dataset (a dataset's own facts are its profile:
:mod:`cloudpipe.core.profile`)."""

from __future__ import annotations

from typing import Final

MAX_PIXELS: Final[int] = 47_040_000
"""The most pixels an image or mask may have (47 megapixels, 16 images of Understanding Clouds):
a JPEG of a few kilobytes can declare 12000 x 12000, an option --mask-shape 100000 100000, and
make a decoder or a mask allocate gigabytes; sizes are checked against this before anything is allocated."""

IMAGENET_MEAN: Final[tuple[float, float, float]] = (0.485, 0.456, 0.406)
IMAGENET_STD: Final[tuple[float, float, float]] = (0.229, 0.224, 0.225)
