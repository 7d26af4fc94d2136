"""Albumentations (2.x) pipelines. Images stay uint8 HWC; normalisation happens on the device
(see :class:`cloudpipe.models.networks.Normalized`), so batches cross to the GPU as bytes.

A config's ``augment`` names the pipeline: a preset of :data:`PRESETS` (``basic``, the seed's
flips, brightness/contrast and noise, is the default), or a list of albumentations transforms by
name with their parameters, checked at config load (:func:`check_augment`)."""

from __future__ import annotations

import difflib
import inspect
import math
import warnings
from typing import Any

import albumentations as A
import cv2
import numpy as np

from cloudpipe.core.constants import MAX_PIXELS
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.models import cut, shown

NOISE_STD_RANGE = (0.012, 0.028)  # the seed's GaussNoise var_limit (10, 50), as a fraction of 255


class GaussNoise(A.ImageOnlyTransform):
    """Additive zero-mean Gaussian noise per pixel and channel, std drawn uniformly from
    ``std_range`` x 255: the distribution of ``A.GaussNoise(std_range=...)``, generated in
    float32 by OpenCV instead of albumentations' float64 path (a third of a training sample's
    CPU time; the figures are in benchmarks/README.md). Seeded from the pipeline's generator,
    so augmentation stays reproducible."""

    def __init__(self, std_range: tuple[float, float] = NOISE_STD_RANGE, p: float = 0.5):
        super().__init__(p=p)
        self.std_range = tuple(std_range)

    def get_params(self) -> dict:
        return {"std": self.py_random.uniform(*self.std_range) * 255, "seed": int(self.random_generator.integers(2**31 - 1))}

    def apply(self, img: np.ndarray, std: float, seed: int, **params) -> np.ndarray:
        noise = np.empty(img.shape, np.float32)
        cv2.setRNGSeed(seed)
        cv2.randn(noise.reshape(-1), 0.0, std)
        return cv2.add(img, noise, dtype=cv2.CV_8U)  # saturating


_LIGHT = [{"name": "Affine", "scale": [0.9, 1.1], "translate_percent": [-0.0625, 0.0625], "rotate": [-15, 15],
           "border_mode": cv2.BORDER_CONSTANT, "p": 0.5}]
_MEDIUM = _LIGHT + [{"name": "GridDistortion", "num_steps": 5, "distort_limit": 0.3, "p": 0.3}]
_HEAVY = _MEDIUM + [{"name": "RandomResizedCrop", "scale": [0.6, 1.0], "ratio": [1.2, 1.8], "p": 0.3},
                    {"name": "ChannelShuffle", "p": 0.1}, {"name": "InvertImg", "p": 0.1}, {"name": "ToGray", "p": 0.1}]
PRESETS: dict[str, list[dict]] = {"basic": [], "light": _LIGHT, "medium": _MEDIUM, "heavy": _HEAVY}
"""Steps each preset adds to the seed's (the ``basic`` steps, with the config's ``hflip``,
``vflip``, ``brightness_contrast`` and ``noise`` probabilities). From the medallists' write-ups:
every one used shift-scale-rotate (here ``Affine``, its 2.x spelling) and grid distortion; the
1st place added random crops, channel shuffle, inversion and grey. ``RandomResizedCrop`` crops
60-100% of the image and resizes it back to the training size."""
_OWN: dict[str, type] = {"GaussNoise": GaussNoise}
"""Steps named like albumentations' that this module implements (the same distribution, faster)."""


def train_transform(*, hflip: float, vflip: float, brightness_contrast: float, noise: float, seed: int,
                    augment: str | list[dict] = "basic", size: tuple[int, int] | None = None) -> A.Compose:
    """The training augmentations, masks following every spatial step: a preset of
    :data:`PRESETS` (the ``basic`` steps, the seed's flips, brightness/contrast and noise with
    the probabilities given, then the preset's), or ``augment``, a list of ``{name:
    <albumentations transform>, <its parameters>...}`` that is the whole pipeline. ``seed``:
    the pipeline's (each sample reseeds it, see ``CloudDataset``); ``size``: (H, W) of the
    training images, given to steps that take a ``size`` and were not given one
    (``RandomResizedCrop``); None: such a step must name its size.

    Raises:
        CloudpipeError: an unknown preset or transform (with close matches), or parameters a
            transform refuses (its albumentations message), in one line.
    """
    if isinstance(augment, str):
        if augment not in PRESETS:
            raise CloudpipeError(f"config: augment: must be a preset ({', '.join(PRESETS)}) or a list of transforms, "
                                 f"got {shown(augment)}")
        basic = [
            A.HorizontalFlip(p=hflip),
            A.VerticalFlip(p=vflip),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=brightness_contrast),
            GaussNoise(p=noise),
        ]
        steps = basic + [make_step(spec, i, size) for i, spec in enumerate(PRESETS[augment])]
    else:
        steps = [make_step(spec, i, size) for i, spec in enumerate(augment)]
    return A.Compose(steps, seed=seed)


def transform_names() -> list[str]:
    """Every name a step may take: albumentations' transforms (and this module's ``GaussNoise``)."""
    return sorted(name for name, obj in vars(A).items()
                  if isinstance(obj, type) and issubclass(obj, A.BasicTransform) and not name.startswith("_"))


def make_step(spec: Any, index: int, size: tuple[int, int] | None = None) -> A.BasicTransform:
    """One pipeline step from ``{name: ..., **params}`` (``index``: its place, for messages).

    Raises:
        CloudpipeError: not a mapping with a ``name``, an unknown name (close matches listed),
            or parameters the transform refuses (its own message's first line).
    """
    where = f"config: augment[{index}]"
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise CloudpipeError(f"{where}: must be a mapping with a transform name, e.g. {{name: GridDistortion, p: 0.3}}, "
                             f"got {shown(spec)}")
    name, params = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    cls = _OWN.get(name) or getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)) or name.startswith("_"):
        close = difflib.get_close_matches(name, transform_names(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (albumentations' transform names, e.g. GridDistortion, Affine)"
        raise CloudpipeError(f"{where}: unknown transform {shown(name)}{hint}")
    signature = inspect.signature(cls)
    if size is not None and "size" in signature.parameters and "size" not in params \
            and signature.parameters["size"].default is inspect.Parameter.empty:
        params["size"] = tuple(size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # 2.x only warns of unknown arguments
            return cls(**params)
    except (TypeError, ValueError, UserWarning) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        why = "; ".join(lines[1:3]) if len(lines) > 2 and "validation error" in lines[0] else lines[0] if lines else type(err).__name__
        called = cut(f"{name}({', '.join(f'{k}={v!r}' for k, v in params.items())})")
        raise CloudpipeError(f"{where}: {called} refused: {cut(why)}") from None


MAX_SIDE = math.isqrt(MAX_PIXELS)
"""The most pixels a size a step names may be (6858: the side of a square of
:data:`~cloudpipe.core.competition.MAX_PIXELS`); a pad, crop or resize to 100000 x 100000 would
allocate tens of gigabytes."""
SIZES = ("height", "width", "min_height", "min_width", "size", "max_size", "max_size_hw", "min_max_height",
         "target_size", "cell_shape", "padding", "px", "x_min", "x_max", "y_min", "y_max", "pad_height_divisor",
         "pad_width_divisor")
"""Parameters of albumentations' transforms that are sizes in pixels."""


def _numbers(value: Any) -> list[float]:
    """The numbers in a parameter's value (nested lists and tuples included)."""
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def check_augment(augment: str | list[dict], size: tuple[int, int], masks: bool = True) -> None:
    """Build the pipeline ``augment`` names (see :func:`train_transform`) and, for a list, run
    each step once, always applied, on a blank image (and masks) of ``size``: it must keep them
    uint8 at that size (no ``Normalize``, no ``Resize`` to another size). A step must need no
    data beside the image and its masks (``HistogramMatching``, ``FDA``, ``Mosaic``... read
    reference images or other samples that training does not give) and name no size in pixels
    above :data:`MAX_SIDE`. ``masks``: whether training gives the steps masks (segmentation).
    The first problem is a CloudpipeError, in one line.
    """
    pipeline = train_transform(hflip=0.5, vflip=0.5, brightness_contrast=0.5, noise=0.5, seed=0, augment=augment,
                               size=size)
    if isinstance(augment, str):
        return
    given = {"image", "mask"} if masks else {"image"}
    sample = {"image": np.zeros((*size, 3), np.uint8)} | ({"mask": np.zeros((*size, 4), np.uint8)} if masks else {})
    for i, (spec, step) in enumerate(zip(augment, pipeline.transforms)):
        where = f"config: augment[{i}]: {spec['name']}"
        large = [k for k, v in spec.items() if k in SIZES and any(abs(n) > MAX_SIDE for n in _numbers(v))]
        if large:
            raise CloudpipeError(f"{where}: {large[0]} = {shown(spec[large[0]])} is larger than {MAX_SIDE} pixels "
                                 f"(the side of {MAX_PIXELS:,} pixels, 16 competition images)")
        needs = sorted(set(step.targets_as_params) - given)
        if needs == ["mask"]:
            raise CloudpipeError(f"{where} reads masks, which the classifier's images have none of")
        if needs:
            raise CloudpipeError(f"{where} reads {', '.join(needs)} beside each image (reference images or other samples), "
                                 f"which training does not give: only the image{' and its masks' if masks else ''}")
        try:
            sample = A.Compose([make_step({**spec, "p": 1.0}, i, size)], seed=0)(**sample)
        except Exception as err:  # noqa: BLE001 (whatever albumentations raises: one line, not a traceback at training)
            why = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}" if str(err).strip() else type(err).__name__
            raise CloudpipeError(f"{where} fails on a {size[0]} x {size[1]} image{' and masks' if masks else ''}: "
                                 f"{cut(why)}") from None
    shape = tuple(size)
    image, mask = sample["image"], sample.get("mask")
    if image.dtype != np.uint8 or image.shape != (*shape, 3) or (masks and mask.shape != (*shape, 4)):
        got = f"an image {image.dtype} {list(image.shape)}" + (f" and masks {list(mask.shape)}" if masks else "")
        raise CloudpipeError(f"config: augment must keep images uint8 at image_size {list(shape)}"
                             f"{' and masks alike' if masks else ''}; it gives {got}")
