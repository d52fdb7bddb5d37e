"""What the training loop's plug-ins see: the :class:`TrainContext` a method's ``setup`` and the callbacks receive,
and the callback contract with its decisions.

Callbacks (the catastrophic-overfitting monitor, the kNN monitor, ...) subclass :class:`Callback` and override
what they need; the loop calls every hook of every callback:

- ``callback.on_epoch_end(ctx) -> Decision | None``: runs on rank 0 after each epoch; may add numbers to
  ``ctx.stats``; returns ``"continue"`` (or ``None``), ``"stop"`` (keep the current weights) or ``"rollback"``
  (restore the best weights, then stop). The decision is broadcast to every rank.
- ``callback.every_steps`` (int; 0: never) and ``callback.on_step_end(ctx)``: the same, every ``every_steps``
  optimizer steps, counted over the whole run (a resumed run checks at the same steps).
- ``callback.state_dict()`` / ``callback.load_state_dict(state)``: saved in every checkpoint (default: nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from robustlab.training.config import TrainConfig

Decision = Literal["continue", "stop", "rollback"]
DECISIONS = ("continue", "stop", "rollback")


class Callback:
    """A training-loop hook (e.g. the catastrophic-overfitting monitor) that may ask to stop or roll back; every
    hook defaults to doing nothing."""

    every_steps: int = 0  # on_step_end runs every this many optimizer steps (0: never)
    events: Sequence[dict[str, Any]] = ()  # what the run's report lists (e.g. catastrophic-overfitting events)

    def on_epoch_end(self, ctx: TrainContext) -> Decision | None:
        """After each epoch (rank 0): add to ``ctx.stats``, and continue (None), stop or roll back."""
        return None

    def on_step_end(self, ctx: TrainContext) -> Decision | None:
        """Every ``every_steps`` optimizer steps (rank 0): as :meth:`on_epoch_end`."""
        return None

    def state_dict(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of this callback (None: nothing)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state on resume."""


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
