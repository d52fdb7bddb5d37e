"""Success criteria: when does an adversarial example count as a success?

A criterion maps ``(logits, labels) -> bool (N,)``; for targeted attacks ``labels`` are the targets.
Untargeted, targeted and top-k are three criteria of one kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def interest_class_rank(logits: Tensor, labels: Tensor) -> Tensor:
    """Rank of the interest class in the sorted logits, 1 = highest: ``1 + #{j : z_j > z_y}``."""
    true = logits.gather(1, labels[:, None])
    return 1 + (logits > true).sum(dim=1)


@dataclass(frozen=True)
class Misclassified:
    """Untargeted top-k success: the true class is pushed out of the top k (k = 1: misclassified)."""

    k: int = 1

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        return interest_class_rank(logits, labels) > self.k

    @property
    def name(self) -> str:
        return "misclassified" if self.k == 1 else f"top{self.k}-misclassified"


@dataclass(frozen=True)
class TargetedMisclassified:
    """Targeted success: the target class (given as ``labels``) is the top-1 prediction."""

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        return logits.argmax(dim=1) == labels

    @property
    def name(self) -> str:
        return "targeted"


@dataclass(frozen=True)
class NeverSucceeds:
    """A criterion that never holds, so the attack runs all its steps on every sample (no early stop):
    feature-space and TRADES attacks, whose "success" has no meaning."""

    def __call__(self, outputs: Tensor, labels: Tensor) -> Tensor:
        return torch.zeros(outputs.shape[0], dtype=torch.bool, device=outputs.device)

    @property
    def name(self) -> str:
        return "never"
