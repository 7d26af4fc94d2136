"""Devices and mixed precision on a CPU-only machine; a process outside torchrun is rank 0 of 1."""

from __future__ import annotations

import pytest
import torch

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.engine.devices import autocast, resolve_device, resolve_workers
from cloudpipe.engine.dist import Dist


def test_resolve_device_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(CloudpipeError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(CloudpipeError, match="auto, cpu or cuda"):
        resolve_device("tpu")


def test_autocast_dtype(monkeypatch):
    from cloudpipe.engine import devices

    assert autocast(torch.device("cpu"), False) is None
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    assert autocast(torch.device("cpu"), True) == torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)  # emulated bf16 is slower than fp32: none
    assert autocast(torch.device("cpu"), True) is None
    monkeypatch.undo()
    assert autocast(torch.device("cpu"), True) == (torch.bfloat16 if devices.cpu_has_bf16() else None)


def test_single_process_dist(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = Dist.from_env()
    assert (dist.rank, dist.world, dist.is_main) == (0, 1, True)
    assert dist.mean(6.0, 3) == 2.0 and dist.gather("x") == ["x"]
    model = torch.nn.Linear(2, 2)
    assert dist.wrap(model, torch.device("cpu")) is model


def test_the_command_line_asks_dist_for_the_rank(monkeypatch, tmp_path):
    """Under torchrun an error every rank meets is said by rank 0 alone; Dist reads the rank."""
    from tests.conftest import cli

    args = ("evaluate", "--truth", tmp_path / "none.csv", "--pred", tmp_path / "none.csv")
    monkeypatch.setenv("RANK", "1")
    assert Dist.env_rank() == 1
    quiet = cli(*args)
    assert quiet.exit_code == 2 and quiet.stderr == ""
    monkeypatch.delenv("RANK")
    said = cli(*args)
    assert said.exit_code == 2 and said.stderr.count("error:") == 1


@pytest.mark.parametrize("cores, cpu, cuda", [(1, 0, 1), (2, 0, 1), (4, 0, 3), (16, 0, 15), (64, 0, 16)])
def test_auto_workers_feed_a_gpu_and_leave_the_cpu_to_the_model(monkeypatch, cores, cpu, cuda):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    assert resolve_workers("auto", torch.device("cpu")) == cpu
    assert resolve_workers("auto", torch.device("cuda", 0)) == cuda
    assert resolve_workers(5, torch.device("cuda", 0)) == 5 == resolve_workers(5, torch.device("cpu"))
    assert resolve_workers(0, torch.device("cpu")) == 0
