"""How to run a model for inference: one settings object that travels through every layer."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

from cloudpipe.core.errors import BadType, BadValue

Device = Literal["auto", "cpu", "cuda"]
Decode = Literal["workers", "device"]
TtaViews = Literal[3, 4]
TTA_SCALES: tuple[float, float] = (0.25, 4.0)
"""The range of a multi-scale TTA factor: 0 would run the model on a 32 x 32 image, 40 on a huge one."""


def check_tta_scales(scales: object) -> tuple[float, ...]:
    """``scales`` as a tuple of distinct factors in :data:`TTA_SCALES`.

    Raises:
        BadType: not a tuple or list of numbers. BadValue: empty, repeated, NaN, infinite, or
            outside the range (naming ``tta_scales``).
    """
    low, high = TTA_SCALES
    if not isinstance(scales, (tuple, list)) or any(isinstance(s, bool) or not isinstance(s, numbers.Real) for s in scales):
        raise BadType(f"tta_scales must be a tuple of numbers, e.g. (0.75, 1.0, 1.25); got {scales!r}")
    if not scales or any(not (math.isfinite(s) and low <= s <= high) for s in scales) or len(set(scales)) < len(scales):
        raise BadValue(f"tta_scales must be distinct factors in [{low:g}, {high:g}], e.g. (0.75, 1.0, 1.25); got {scales!r}")
    return tuple(float(s) for s in scales)


@dataclass(frozen=True)
class InferenceSettings:
    """Options of every command that runs a model.

    Attributes:
        workers: DataLoader worker processes reading images (0: in the main process), or
            ``auto`` (see :func:`cloudpipe.engine.devices.resolve_workers`).
        decode: ``workers`` decodes each JPEG reduced (libjpeg's DCT scaling) in the workers;
            ``device`` decodes whole batches of the files' bytes on the model's device
            (:func:`cloudpipe.data.images.decode_batch`), not strictly: data corrupt inside a
            well-framed file decodes with a warning.
        tta: average the model over the flipped views :data:`~cloudpipe.engine.infer.TTA_VIEWS`
            of ``tta_views`` (4: the 1st place's "flip TTA x4"), masks flipped back.
        tta_scales: also average over the image resized by each of these factors (the 5th
            place's multi-scale TTA, :func:`~cloudpipe.engine.infer.scaled`); with ``tta``,
            every flipped view at every scale.
        amp: mixed precision (:func:`~cloudpipe.engine.devices.autocast`) when the run was
            trained with it.
        allow_partial: see :func:`~cloudpipe.data.runfolder.trained_checkpoints`.
    """

    device: Device = "auto"
    batch_size: int = 16
    workers: int | Literal["auto"] = "auto"
    decode: Decode = "workers"
    compile: bool = False
    tta: bool = False
    tta_views: TtaViews = 3
    tta_scales: tuple[float, ...] = (1.0,)
    amp: bool = True
    progress: bool = True
    allow_partial: bool = False

    def __post_init__(self) -> None:
        """Refuse TTA scales no model can run at (:func:`check_tta_scales`)."""
        object.__setattr__(self, "tta_scales", check_tta_scales(self.tta_scales))
