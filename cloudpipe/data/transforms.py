"""Albumentations (2.x) pipelines. Images stay uint8 HWC; normalisation happens on the device
(see :class:`cloudpipe.models.networks.Normalized`), so batches cross to the GPU as bytes.

A config's ``augment`` names the pipeline: a preset of :data:`PRESETS` (``basic``, the seed's
flips, brightness/contrast and noise, is the default), or a list of albumentations transforms by
name with their parameters, checked at config load (:func:`check_augment`)."""

from __future__ import annotations

import difflib
import inspect
import warnings
from typing import Any

import albumentations as A
import cv2
import numpy as np

from cloudpipe.core.errors import CloudpipeError

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
    """The training augmentations, masks following every spatial step.

    Args:
        hflip, vflip, brightness_contrast, noise: probability of each of the seed's
            augmentations (flips, brightness/contrast, Gaussian noise), the ``basic`` steps that
            every preset starts with.
        seed: the pipeline's seed (each sample reseeds it, see ``CloudDataset``).
        augment: a preset of :data:`PRESETS` (``basic``: the seed's steps alone), or a list of
            ``{name: <albumentations transform>, <its parameters>...}`` that is the whole pipeline.
        size: (H, W) of the training images, given to steps that take a ``size`` and were not
            given one (``RandomResizedCrop``); None: such a step must name its size.

    Raises:
        CloudpipeError: an unknown preset or transform (with close matches), or parameters a
            transform refuses (its albumentations message), in one line.
    """
    if isinstance(augment, str):
        if augment not in PRESETS:
            raise CloudpipeError(f"config: augment = {augment!r} is not a preset ({', '.join(PRESETS)}) or a list of transforms")
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
        raise CloudpipeError(f"{where} = {spec!r} must be a mapping with a transform name, e.g. {{name: GridDistortion, p: 0.3}}")
    name, params = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    cls = _OWN.get(name) or getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)) or name.startswith("_"):
        close = difflib.get_close_matches(name, transform_names(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (albumentations' transform names, e.g. GridDistortion, Affine)"
        raise CloudpipeError(f"{where}: unknown transform {name!r}{hint}")
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
        raise CloudpipeError(f"{where}: {name}({', '.join(f'{k}={v!r}' for k, v in params.items())}) refused: {why}") from None


def check_augment(augment: str | list[dict], size: tuple[int, int]) -> None:
    """Build the pipeline ``augment`` names (see :func:`train_transform`) and, for a list, run it
    once on a blank image and masks of ``size``: it must keep them uint8 at that size (no
    ``Normalize``, no ``Resize`` to another size).

    Raises:
        CloudpipeError: the first problem, in one line.
    """
    pipeline = train_transform(hflip=0.5, vflip=0.5, brightness_contrast=0.5, noise=0.5, seed=0, augment=augment,
                               size=size)
    if isinstance(augment, str):
        return
    shape = tuple(size)
    out = pipeline(image=np.zeros((*shape, 3), np.uint8), mask=np.zeros((*shape, 4), np.uint8))
    image, mask = out["image"], out["mask"]
    if image.dtype != np.uint8 or image.shape != (*shape, 3) or mask.shape != (*shape, 4):
        raise CloudpipeError(f"config: augment must keep images uint8 at image_size {list(shape)} and masks alike; "
                             f"it gives an image {image.dtype} {list(image.shape)} and masks {list(mask.shape)}")
