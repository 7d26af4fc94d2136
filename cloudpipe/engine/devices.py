"""Devices, mixed precision and (optional) torch.distributed, behind one small interface."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as torch_dist
from torch import nn

from cloudpipe.core.choices import DEVICES
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.outputs import Inputs, claim_outputs, output_lock
from cloudpipe.data.probstore import probability_store


@dataclass
class Dist:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Dist:
        """Read torchrun's environment; initialise the process group when world > 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not torch_dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch_dist.init_process_group(backend=backend)
        return cls(rank, world, local_rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around ``model`` when distributed, else ``model``."""
        if self.world == 1:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, net: nn.Module, sync: bool):
        """Skip DDP's gradient all-reduce on accumulation micro-steps (those with ``sync`` False)."""
        if self.world == 1 or sync:
            return contextlib.nullcontext()
        return net.no_sync()

    def mean(self, total: float, count: int) -> float:
        """``sum(total) / sum(count)`` over ranks."""
        if self.world > 1:
            t = torch.tensor([total, float(count)], dtype=torch.float64)
            torch_dist.all_reduce(t)
            total, count = float(t[0]), int(t[1])
        return total / max(count, 1)

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch_dist.all_gather_object(out, obj)
        return out

    def shard(self, items: list) -> list:
        """This rank's share of ``items``: items ``rank, rank + world, ...`` (all of them when
        not distributed); :meth:`join` puts the shares back in order."""
        return items[self.rank :: self.world]

    def join(self, shares: list[np.ndarray]) -> np.ndarray:
        """The rows of every rank's :meth:`shard` (``shares`` in rank order), back in order."""
        if len(shares) == 1:
            return shares[0]
        out = np.empty((sum(len(s) for s in shares), *shares[0].shape[1:]), shares[0].dtype)
        for r, share in enumerate(shares):
            out[r :: len(shares)] = share
        return out

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """A phase whose failure may be one rank's alone (a bad image in its share): every rank
        ends it together, and when any rank raised a CloudpipeError there, every rank raises the
        first one (in rank order), so that rank 0 reports it and no rank waits for one that has
        stopped. A no-op when not distributed. Phases never nest (a rank that failed in an
        inner one would meet the others at another gather).

        Raises:
            CloudpipeError: this rank's, or another rank's, first error of the phase.
        """
        if self.world == 1:
            yield
            return
        failure = None
        try:
            yield
        except CloudpipeError as err:
            failure = str(err)
        first = next((m for m in self.gather(failure) if m is not None), None)
        if first is not None:
            error = CloudpipeError(first)
            error.shared = True  # every rank has it: rank 0 alone reports it
            raise error

    def predict_store(self, names: list[str], predict: Callable[[list[str]], tuple[np.ndarray, pd.DataFrame | None]],
                      out: Path) -> tuple[np.ndarray | None, pd.DataFrame | None]:
        """A probability store of ``names`` predicted in shares: ``predict`` gets this rank's
        :meth:`shard` (every name when not distributed) and returns its store (rows in that
        order) and presence frame (or None); rank 0 gets the whole store, rows in ``names``
        order, and the whole presence frame; the other ranks (None, None). A failure in any
        rank's share stops every rank (:meth:`together`). Pipeline code calls this and never
        looks at ranks.
        """
        with self.together():
            store, presence = predict(self.shard(names))
        if self.world == 1:
            return store, presence
        return self._join_store(store, presence, names, out)

    def _join_store(self, store: np.ndarray, presence: pd.DataFrame | None, names: list[str],
                    out: Path) -> tuple[np.ndarray | None, pd.DataFrame | None]:
        """Rank 0's store and presence of all ``names`` from every rank's share (rows
        ``rank, rank + world, ...``); (None, None) on the other ranks.

        The other ranks' uint8 shares pass through hidden files beside ``out``
        (``.<name>.rank<r>.<pid>.npy``, named by the writing process so that the next run of ``out``
        can remove the share of a rank killed with ``-9``), which rank 0 copies into its memory map a
        few rows at a time: memory stays flat, where gathering the arrays themselves would hold every
        rank's share in every rank's memory at once. Each rank removes its file when rank 0 is done,
        rank 0 removes them all in any case (a rank that fails stops the others: torchrun ends
        them); rank 0's own share never leaves its memory map, and the small presence frames are
        gathered directly.
        """
        mine = out.with_name(f".{out.name}.rank{self.rank}.{os.getpid()}.npy")
        shares = [mine]
        try:
            with self.together():
                if not self.is_main:
                    try:
                        np.save(mine, store)
                    except OSError as err:
                        raise CloudpipeError(f"cannot write this rank's probabilities ({err.strerror or err})",
                                             path=mine) from None
            gathered = self.gather((presence, mine))  # also: every share is written
            heads, shares = [h for h, _ in gathered], [path for _, path in gathered]
            full = None
            if self.is_main:
                full = probability_store(out.parent, (len(names), *store.shape[1:]))
                for r, path in enumerate(shares):
                    part = store if r == 0 else np.load(path, mmap_mode="r")
                    rows = np.arange(r, len(names), self.world)
                    for start in range(0, len(rows), 16):
                        full[rows[start : start + 16]] = part[start : start + 16]
                    del part
            self.barrier()  # rank 0 has read every share
        finally:
            for path in shares if self.is_main else [mine]:
                path.unlink(missing_ok=True)
        if not self.is_main:
            return None, None
        joined = None if any(h is None for h in heads) else pd.concat(heads).reindex(pd.Index(names, name="image"))
        return full, joined

    @contextlib.contextmanager
    def claim_outputs(self, outputs: list[Path], inputs: Inputs, *, overwrite: bool = False,
                      locked: Sequence[Path] = ()) -> Iterator[None]:
        """:func:`~cloudpipe.data.outputs.claim_outputs` on every rank (each checks the paths, so
        each reports the same error), locked by rank 0 alone, the one that writes; ``locked``:
        files rank 0 also locks without checking them (replaced on purpose, never refused)."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(claim_outputs(outputs, inputs, overwrite=overwrite, lock=self.is_main))
            for path in locked if self.is_main else ():
                stack.enter_context(output_lock(path))
            yield

    def barrier(self) -> None:
        """Wait for every rank (no-op when not distributed)."""
        if self.world > 1:
            torch_dist.barrier()

    def close(self) -> None:
        """Tear the process group down (no-op when not distributed)."""
        if self.world > 1 and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


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
