"""The optimisation settings of a training run (:class:`TrainConfig`), its learning-rate schedules and optimizers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustlab.errors import RobustlabError

OPTIMIZERS = ("sgd", "adam")
TRAIN_PRECISIONS = ("fp32", "bf16", "fp16")
TRAIN_MEMORY_FORMATS = ("contiguous", "channels_last")
LR_SCHEDULES = ("cyclic", "piecewise", "cosine", "constant")


@dataclass
class TrainConfig:
    """Everything about the optimisation that is not the method itself."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" | "adam"
    lr: float = 0.1  # the peak learning rate (cyclic) or the initial one (piecewise, cosine, constant)
    lr_schedule: str = "cyclic"  # "cyclic" | "piecewise" | "cosine" | "constant"
    momentum: float = 0.9  # SGD momentum (Adam: beta1)
    weight_decay: float = 5e-4
    seed: int = 0
    precision: str = "fp32"  # "fp32" | "bf16" (autocast; CUDA, or CPUs with native bf16) | "fp16" (CUDA, grad scaling)
    memory_format: str = "contiguous"  # "contiguous" | "channels_last" (model and image batches; 1.4x on the zoo CNN)
    num_workers: int = 0
    drop_last: bool = False
    progress: bool = False  # a tqdm bar per epoch (rank 0)
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch is always saved)
    best_metric: str | None = None  # a key of the epoch stats to keep the best checkpoint by (higher is better)
    max_steps_per_epoch: int | None = None  # cut epochs short (tests, benchmarks)
    tensorboard: bool = False  # also write the run's scalars as TensorBoard events (OUT/tensorboard)

    def validate(self) -> None:
        """One error line for a setting the loop cannot train with."""
        if self.epochs < 1 or self.batch_size < 1:
            raise RobustlabError(f"epochs and batch size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise RobustlabError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise RobustlabError(f"unknown LR schedule {self.lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}")
        if self.precision not in TRAIN_PRECISIONS:
            raise RobustlabError(f"unknown precision {self.precision!r}; choose one of: {', '.join(TRAIN_PRECISIONS)}")
        if self.memory_format not in TRAIN_MEMORY_FORMATS:
            raise RobustlabError(
                f"unknown memory format {self.memory_format!r}; choose one of: {', '.join(TRAIN_MEMORY_FORMATS)}"
            )
        check_number("the learning rate (--lr)", self.lr, strict=True)
        check_number("the weight decay (--weight-decay)", self.weight_decay)
        check_number("the momentum (--momentum)", self.momentum)
        if self.momentum >= 1:
            raise RobustlabError(f"the momentum (--momentum) must be in [0, 1), got {self.momentum}")


def lr_at(config: TrainConfig, progress: float) -> float:
    """The learning rate at ``progress`` in [0, 1] of training (per step, so schedules are smooth)."""
    lr = config.lr
    if config.lr_schedule == "cyclic":  # Wong et al. 2020: 0 -> lr at 2/5 of training -> 0
        peak = 0.4
        return lr * (progress / peak if progress < peak else max(0.0, (1 - progress) / (1 - peak)))
    if config.lr_schedule == "piecewise":
        return lr * (0.1 if progress >= 0.5 else 1.0) * (0.1 if progress >= 0.75 else 1.0)
    if config.lr_schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return lr


def make_optimizer(params: Sequence[nn.Parameter] | Any, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or Adam (weight decay) at ``config.lr``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, betas=(config.momentum, 0.999), weight_decay=config.weight_decay)


def check_number(name: str, value: float | None, low: float = 0.0, strict: bool = False) -> None:
    """Refuse a non-finite hyper-parameter or one below ``low`` (``strict``: at or below) with one line."""
    if value is None:
        return
    bad = not math.isfinite(value) or (value <= low if strict else value < low)
    if bad:
        raise RobustlabError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value}")


__all__ = ["LR_SCHEDULES", "OPTIMIZERS", "TrainConfig", "check_number", "lr_at", "make_optimizer"]
