"""The facts of the competition, in one place."""

from __future__ import annotations

from typing import Final

CLASSES: Final[tuple[str, ...]] = ("Fish", "Flower", "Gravel", "Sugar")
"""Class order used everywhere: CSV rows, model outputs, probability columns."""

IMAGE_SHAPE: Final[tuple[int, int]] = (1400, 2100)
"""(H, W) of the competition's JPEGs and of the masks in ``train.csv``."""

SUBMISSION_SHAPE: Final[tuple[int, int]] = (350, 525)
"""(H, W) of the masks in a submission."""

MAX_PIXELS: Final[int] = 16 * IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
"""The most pixels an image or mask may have (16 competition images, 47 megapixels): a JPEG of a
few kilobytes can declare 12000 x 12000, an option --mask-shape 100000 100000, and make a decoder
or a mask allocate gigabytes; sizes are checked against this before anything is allocated."""

CSV_COLUMNS: Final[tuple[str, str]] = ("Image_Label", "EncodedPixels")

IMAGENET_MEAN: Final[tuple[float, float, float]] = (0.485, 0.456, 0.406)
IMAGENET_STD: Final[tuple[float, float, float]] = (0.229, 0.224, 0.225)


def split_label(image_label: str) -> tuple[str, str]:
    """Split ``"<image>_<class>"`` on the last underscore into ``(image, class)`` (no underscore: a ValueError)."""
    image, sep, cls = image_label.rpartition("_")
    if not sep or not image:
        raise ValueError(f"Image_Label {image_label!r} has no '<image>_<class>' form")
    return image, cls


def join_label(image: str, cls: str) -> str:
    """The ``Image_Label`` of one (image, class) pair."""
    return f"{image}_{cls}"
