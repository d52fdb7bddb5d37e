"""The training loop's checkpoint: ``last.pt`` written atomically after each epoch, read back (safely) to resume.

It holds only tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)`` takes it; the
global step is saved too, so step-level callbacks (``--monitor-every``) fire at the same steps after a resume.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from robustlab.errors import CheckpointError, RobustlabError
from robustlab.io import atomic_torch_save, write_json
from robustlab.safe_load import safe_load
from robustlab.training.config import TrainConfig
from robustlab.training.context import Callback, TrainContext
from robustlab.training.method import Method

log = logging.getLogger(__name__)
CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "scaler", "method", "callbacks", "epoch", "history"}


class LoopState(Protocol):
    """What a checkpoint saves and restores of the training loop (its ``_Loop``)."""

    model: nn.Module
    method: Method
    callbacks: Sequence[Callback]
    config: TrainConfig
    ctx: TrainContext
    batches: Any  # len(batches): the steps per epoch
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    out: Path | None
    start_epoch: int
    best_epoch: int | None
    best_value: float | None
    best_state: dict[str, Tensor] | None
    best_step: int | None
    stop_reason: str | None
    train_seconds: float


def save_checkpoint(loop: LoopState, epoch: int) -> None:
    """``last.pt`` and ``history.json`` of the run after ``epoch`` (rank 0 only; nothing without an out folder)."""
    out = loop.out
    if out is None or not loop.ctx.is_main:
        return
    atomic_torch_save(
        {
            "model": loop.model.state_dict(), "optimizer": loop.optimizer.state_dict(),
            "scheduler": loop.scheduler.state_dict(), "scaler": loop.scaler.state_dict(),
            "method": loop.method.state_dict(), "callbacks": [cb.state_dict() for cb in loop.callbacks], "epoch": epoch,
            "step": loop.ctx.step, "history": loop.ctx.history, "best_epoch": loop.best_epoch,
            "best_value": loop.best_value, "best_step": loop.best_step, "stop_reason": loop.stop_reason,
            "train_seconds": loop.train_seconds,
            "steps_per_epoch": len(loop.batches), "config": asdict(loop.config),
        },
        out / "last.pt",
    )  # fmt: skip
    write_json(out / "history.json", {"config": asdict(loop.config), "history": loop.ctx.history})


def resume_from(loop: LoopState, trust: bool = False) -> None:
    """Restore the run in ``loop.out/last.pt`` (weights, optimizer, schedule, method and callback state, step)."""
    out = loop.out
    if out is None or not (out / "last.pt").is_file():
        raise RobustlabError(
            f"--resume: no checkpoint {out / 'last.pt' if out else 'last.pt'} to continue; start over "
            "without --resume (with --overwrite if the folder holds the run's other files)"
        )
    ckpt = safe_load(out / "last.pt", trust, what="training checkpoint")
    if not isinstance(ckpt, dict) or not set(ckpt) >= CHECKPOINT_KEYS:
        raise CheckpointError(
            f"{out / 'last.pt'} is not a robustlab training checkpoint; start a new run in another --out"
        )
    if ckpt["steps_per_epoch"] != len(loop.batches) or ckpt["config"]["epochs"] != loop.config.epochs:
        raise RobustlabError(
            "--resume with a different data size, batch size or number of epochs than the checkpoint; "
            "resume with the original settings"
        )
    try:
        loop.model.load_state_dict(ckpt["model"])
        loop.optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{out / 'last.pt'} does not fit this model or optimizer ({str(exc).splitlines()[0][:120]}); "
            "resume with the original settings or start over with --overwrite"
        ) from None
    loop.scheduler.load_state_dict(ckpt["scheduler"])
    loop.scaler.load_state_dict(ckpt["scaler"])
    if ckpt["method"] is not None:
        loop.method.load_state_dict(ckpt["method"])
    for cb, state in zip(loop.callbacks, ckpt["callbacks"]):
        if state is not None:
            cb.load_state_dict(state)
    loop.start_epoch, loop.ctx.history = ckpt["epoch"], ckpt["history"]
    loop.ctx.step = ckpt.get("step", ckpt["epoch"] * ckpt["steps_per_epoch"])
    loop.best_epoch, loop.best_value, loop.stop_reason = ckpt["best_epoch"], ckpt["best_value"], ckpt["stop_reason"]
    loop.train_seconds, loop.best_step = ckpt["train_seconds"], ckpt.get("best_step")  # older last.pt: None
    if (out / "best.pt").is_file():
        loop.best_state = safe_load(out / "best.pt", trust, what="best checkpoint")
    log.info("resumed from %s at epoch %d", out / "last.pt", loop.start_epoch)
