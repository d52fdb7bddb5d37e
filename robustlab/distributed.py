"""The one place that knows about ``torchrun``: joining its process group (gloo on CPU, nccl on GPU), this
process's rank, and the few collectives robustlab needs (gather to rank 0, barrier, broadcast of a decision).

Evaluation shards batches ``b % world == rank`` and gathers them to rank 0; training wraps the model in
DistributedDataParallel. Both start from :func:`init_distributed` and read their place from a :class:`Shard`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from robustlab.errors import RobustlabError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """This process's place in the run: ``rank`` of ``world`` (1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def as_tuple(self) -> tuple[int, int]:
        return self.rank, self.world


def current_shard() -> Shard:
    """The running process group's shard; ``Shard()`` unless torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Shard()


def init_distributed(device: torch.device) -> Shard:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1), else one process.

    The backend is nccl for a CUDA ``device`` (each rank takes ``cuda:LOCAL_RANK``) and gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return current_shard()
    if not dist.is_available():
        raise RobustlabError("torch.distributed is not available in this torch build; run one process")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        log.info("rank %d of %d joined (%s)", dist.get_rank(), world, backend)
    return current_shard()


def shard_device(device: torch.device, shard: Shard) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` under torchrun on GPUs (or an unnumbered cuda), else ``device``."""
    if device.type == "cuda" and (shard.distributed or device.index is None):
        return torch.device("cuda", shard.local_rank)
    return device


def gather_to_main(obj: Any, shard: Shard) -> list[Any] | None:
    """Every rank's ``obj`` as a list on rank 0 (``None`` on the others); ``[obj]`` for one process."""
    if not shard.distributed:
        return [obj]
    gathered: list[Any] = [None] * shard.world if shard.is_main else []
    dist.gather_object(obj, gathered if shard.is_main else None, dst=0)
    return gathered if shard.is_main else None


def broadcast_ints(values: list[int], shard: Shard, device: torch.device) -> list[int]:
    """Rank 0's ``values`` on every rank (a no-op for one process)."""
    if not shard.distributed:
        return values
    t = torch.tensor(values, dtype=torch.long, device=device)
    dist.broadcast(t, src=0)
    return [int(v) for v in t.tolist()]


def broadcast_object(obj: Any, shard: Shard) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank (a no-op for one process)."""
    if not shard.distributed:
        return obj
    box = [obj if shard.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(shard: Shard) -> None:
    """Wait for every rank (no-op for one process)."""
    if shard.distributed:
        dist.barrier()


def finish(shard: Shard) -> None:
    """Leave the process group."""
    if shard.distributed and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (inner attacks run on it: no extra all-reduce)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


__all__ = [
    "Shard",
    "barrier",
    "broadcast_ints",
    "broadcast_object",
    "current_shard",
    "finish",
    "gather_to_main",
    "init_distributed",
    "shard_device",
    "unwrap",
]
