"""Devices and mixed precision on a CPU-only machine; a process outside torchrun is rank 0 of 1."""

from __future__ import annotations

import pytest
import torch

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.engine.devices import Dist, autocast, resolve_device


def test_resolve_device_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(CloudpipeError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(CloudpipeError, match="auto, cpu or cuda"):
        resolve_device("tpu")


def test_autocast_dtype():
    assert autocast(torch.device("cpu"), True) == torch.bfloat16
    assert autocast(torch.device("cpu"), False) is None


def test_single_process_dist(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = Dist.from_env()
    assert (dist.rank, dist.world, dist.is_main) == (0, 1, True)
    assert dist.mean(6.0, 3) == 2.0 and dist.gather("x") == ["x"]
    model = torch.nn.Linear(2, 2)
    assert dist.wrap(model, torch.device("cpu")) is model
