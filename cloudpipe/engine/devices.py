"""Devices, mixed precision, DataLoader workers and compilation (a process's place among
``torchrun`` ranks is :mod:`cloudpipe.engine.dist`'s)."""

from __future__ import annotations

import os

import torch
from torch import nn

from cloudpipe.core.choices import DEVICES
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.engine.dist import Dist


def resolve_device(name: str, dist: Dist | None = None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; under torchrun, this rank's GPU (with cuDNN's
    autotuner on)."""
    if name not in DEVICES:
        raise CloudpipeError(f"--device must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise CloudpipeError("--device cuda, but no CUDA GPU is available (use --device cpu or auto)")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    index = dist.local_rank if dist else 0
    torch.cuda.set_device(index)
    torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    return torch.device("cuda", index)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX, as oneDNN reports it)."""
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:  # a build without oneDNN
        return False


def autocast(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype for a device: bf16 on GPUs that have it, else fp16; bf16 on a CPU
    that computes it natively; None when mixed precision is off, and on other CPUs, where bf16
    is emulated and far slower than fp32 (benchmarks/README.md)."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


AUTO = "auto"
GPU_WORKERS_MAX = 16


def resolve_workers(workers: int | str, device: torch.device) -> int:
    """DataLoader workers: ``auto`` is every core this process may use but one (at most 16)
    beside a CUDA GPU, where JPEG decoding must keep the GPU fed, and none on the CPU: there the
    model's threads take every core, a worker decoding beside them stalls them, and decoding
    inline costs only its own time (profiled in benchmarks/README.md). A number is taken as it is."""
    if workers != AUTO:
        return int(workers)
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores - 1, GPU_WORKERS_MAX))


def compile_model(model: nn.Module, inference: bool) -> nn.Module:
    """``torch.compile`` of a model for fixed input shapes; for ``inference``, with the weights
    frozen into the graph (convolutions and batch norms folded): faster inference for a one-off
    compile of some tens of seconds (measured in benchmarks/README.md)."""
    return torch.compile(model, dynamic=False, options={"freezing": True} if inference else None)
