"""Sharding an evaluation over ``torchrun`` ranks: gloo on CPU, nccl on GPU, results gathered to rank 0.

Batches are fixed slices of the data and rank ``r`` of ``w`` evaluates the batches ``b % w == r``; each batch's
result depends only on its samples and the attacks' seeds, so the gathered result is the one a single
process computes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from robustlab.errors import RobustlabError
from robustlab.eval.evaluator import EvalResult

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


def init_distributed(device: torch.device) -> Shard:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1), else one process.

    The backend is nccl for a CUDA ``device`` (each rank takes ``cuda:LOCAL_RANK``) and gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_available():
        raise RobustlabError("torch.distributed is not available in this torch build; run one process")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        log.info("rank %d of %d joined (%s)", rank, world, backend)
    return Shard(rank, world, local_rank)


def shard_device(device: torch.device, shard: Shard) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` under torchrun on GPUs, else ``device``."""
    if device.type == "cuda" and shard.distributed:
        return torch.device("cuda", shard.local_rank)
    return device


def gather_batches(batches: dict[int, EvalResult], shard: Shard) -> dict[int, EvalResult] | None:
    """All ranks' ``{batch: EvalResult}`` on rank 0 (``None`` on the others); a no-op for one process."""
    if not shard.distributed:
        return batches
    states = {b: r.to_state() for b, r in batches.items()}
    gathered: list[dict | None] = [None] * shard.world if shard.is_main else []
    dist.gather_object(states, gathered if shard.is_main else None, dst=0)
    if not shard.is_main:
        return None
    merged: dict[int, EvalResult] = {}
    for part in gathered:
        merged.update({b: EvalResult.from_state(s) for b, s in (part or {}).items()})
    return merged


def barrier(shard: Shard) -> None:
    """Wait for every rank (no-op for one process)."""
    if shard.distributed:
        dist.barrier()


def finish(shard: Shard) -> None:
    """Leave the process group."""
    if shard.distributed and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["Shard", "barrier", "finish", "gather_batches", "init_distributed", "shard_device"]
