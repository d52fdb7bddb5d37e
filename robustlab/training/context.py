"""What the training loop's plug-ins see: the :class:`TrainContext` a method's ``setup`` and the callbacks receive,
and the callback contract with its decisions.

Callbacks (the catastrophic-overfitting monitor, the kNN monitor, ...):

- ``callback.on_epoch_end(ctx) -> Decision | None``: runs on rank 0 after each epoch; may add numbers to
  ``ctx.stats``; returns ``"continue"`` (or ``None``), ``"stop"`` (keep the current weights) or ``"rollback"``
  (restore the best weights, then stop). The decision is broadcast to every rank.
- optional ``callback.every_steps`` (int > 0) and ``callback.on_step_end(ctx)``: the same, every ``every_steps``
  optimizer steps, counted over the whole run (a resumed run checks at the same steps).
- optional ``callback.state_dict()`` / ``callback.load_state_dict(state)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from robustlab.training.config import TrainConfig

Decision = Literal["continue", "stop", "rollback"]
DECISIONS = ("continue", "stop", "rollback")


class Callback(Protocol):
    """An epoch-end hook (e.g. the catastrophic-overfitting monitor) that may ask to stop or roll back."""

    def on_epoch_end(self, ctx: TrainContext) -> Decision | None: ...


@dataclass
class TrainContext:
    """What methods' ``setup`` and callbacks see."""

    model: nn.Module  # the unwrapped model being trained
    method: Any
    config: TrainConfig
    device: torch.device
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    epoch: int = 0  # 1-based number of the epoch that is running or just ended
    step: int = 0  # optimizer steps so far (global, over the whole run)
    total_steps: int = 0  # optimizer steps the whole run takes (epochs x steps per epoch), set before step 1
    stats: dict[str, float] = field(default_factory=dict)  # this epoch's (or step's) numbers; callbacks add
    history: list[dict[str, float]] = field(default_factory=list)
    out_dir: Path | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


__all__ = ["DECISIONS", "Callback", "Decision", "TrainContext"]
