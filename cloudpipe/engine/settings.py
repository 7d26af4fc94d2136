"""How to run a model for inference: one settings object that travels through every layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class InferenceSettings:
    """Options of every command that runs a model.

    Attributes:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        batch_size: images per forward pass.
        workers: DataLoader worker processes decoding images (0: in the main process).
        tta: average identity, horizontal and vertical flips.
        amp: mixed precision (bf16 on CPU and on GPUs that have it, else fp16) when the run
            was trained with it.
        progress: show a progress bar.
    """

    device: Device = "auto"
    batch_size: int = 16
    workers: int = 2
    tta: bool = False
    amp: bool = True
    progress: bool = True
