"""A process's place in a ``torchrun`` job and the collectives between its ranks (what a
command claims and writes across ranks is :mod:`cloudpipe.engine.runner`'s).

torch is imported only when the job is distributed, so a command that runs no model (``tune-seg``,
``apply-seg``, ``report``, ``show``) starts without it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cloudpipe.core.errors import CloudpipeError, SharedError

if TYPE_CHECKING:
    import torch
    from torch import nn


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
        import torch
        import torch.distributed as torch_dist

        rank, local_rank = cls.env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
        if not torch_dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch_dist.init_process_group(backend=backend)
        return cls(rank, world, local_rank)

    @staticmethod
    def env_rank() -> int:
        """This process's rank, from torchrun's environment (0 when not under torchrun),
        without starting anything: what a command line asks before or after a command's run."""
        return int(os.environ.get("RANK", "0"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around ``model`` when distributed, else ``model``."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, net: nn.Module, sync: bool):
        """Skip DDP's gradient all-reduce on accumulation micro-steps (those with ``sync`` False)."""
        if self.world == 1 or sync:
            return contextlib.nullcontext()
        return net.no_sync()

    def mean(self, total: float, count: int) -> float:
        """``sum(total) / sum(count)`` over ranks."""
        if self.world > 1:
            import torch

            t = torch.tensor([total, float(count)], dtype=torch.float64)
            torch.distributed.all_reduce(t)
            total, count = float(t[0]), int(t[1])
        return total / max(count, 1)

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        import torch.distributed as torch_dist

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
            raise SharedError(first)

    def barrier(self) -> None:
        """Wait for every rank (no-op when not distributed)."""
        if self.world > 1:
            import torch.distributed as torch_dist

            torch_dist.barrier()

    def close(self) -> None:
        """Tear the process group down (no-op when not distributed)."""
        if self.world > 1:
            import torch.distributed as torch_dist

            if torch_dist.is_initialized():
                torch_dist.destroy_process_group()
