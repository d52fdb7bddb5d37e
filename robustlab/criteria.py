"""Success criteria: when does an adversarial example count as a success?

A criterion maps ``(logits, y, target=None) -> bool (N,)``, with the true labels ``y`` and, for targeted attacks,
the targets. Untargeted, targeted and top-k are criteria of one kind, combined with ``&``, ``|`` and ``~``:
targeted top-k success is ``TargetedMisclassified() & Misclassified(k)``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import Tensor

from robustlab.errors import RobustlabError


def interest_class_rank(logits: Tensor, labels: Tensor) -> Tensor:
    """Rank of the interest class in the sorted logits, 1 = highest: ``1 + #{j : z_j > z_y}``; a row with a NaN or
    inf logit ranks it last (it is never "in the top k": such an output is never correct nor robust)."""
    true = logits.gather(1, labels[:, None])
    return torch.where(torch.isfinite(logits).all(1), 1 + (logits > true).sum(dim=1), logits.shape[1])


class Criterion:
    """The base of every criterion: ``criterion(logits, y, target=None) -> bool (N,)``, combinable."""

    name: str = "criterion"

    def __call__(self, logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
        """Per sample, whether the attack succeeded at these logits (true labels ``y``, targets ``target``)."""
        raise NotImplementedError

    def check(self, num_classes: int) -> None:
        """Raise a :class:`RobustlabError` if the criterion can never hold on a model with ``num_classes``."""

    def __and__(self, other: Criterion) -> Criterion:
        return All((self, other))

    def __or__(self, other: Criterion) -> Criterion:
        return AnyOf((self, other))

    def __invert__(self) -> Criterion:
        return Not(self)


@dataclass(frozen=True)
class Misclassified(Criterion):
    """Untargeted top-k success: the true class is pushed out of the top k (k = 1: misclassified)."""

    k: int = 1

    def __call__(self, logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
        return interest_class_rank(logits, y) > self.k

    def check(self, num_classes: int) -> None:
        if self.k >= num_classes:
            raise RobustlabError(
                f"top-k success with k={self.k} is impossible for a {num_classes}-class model (the true class is "
                f"always in the top {num_classes}); use k < {num_classes}"
            )

    @property
    def name(self) -> str:  # type: ignore[override]
        return "misclassified" if self.k == 1 else f"top{self.k}-misclassified"


@dataclass(frozen=True)
class TargetedMisclassified(Criterion):
    """Targeted success: the target class is the top-1 prediction."""

    def __call__(self, logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
        if target is None:
            raise RobustlabError("the targeted criterion needs targets; call the attack with target=...")
        return logits.argmax(dim=1) == target

    @property
    def name(self) -> str:  # type: ignore[override]
        return "targeted"


@dataclass(frozen=True)
class NeverSucceeds(Criterion):
    """A criterion that never holds, so the attack runs all its steps on every sample (no early stop):
    feature-space and TRADES attacks, whose "success" has no meaning."""

    def __call__(self, logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
        return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)

    @property
    def name(self) -> str:  # type: ignore[override]
        return "never"


@dataclass(frozen=True)
class All(Criterion):
    """Every part holds (``a & b``)."""

    parts: tuple[Criterion, ...]

    def __call__(self, logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
        result = self.parts[0](logits, y, target)
        for part in self.parts[1:]:
            result = result & part(logits, y, target)
        return result

    def check(self, num_classes: int) -> None:
        for part in self.parts:
            part.check(num_classes)

    @property
    def name(self) -> str:  # type: ignore[override]
        return " & ".join(part.name for part in self.parts)


@dataclass(frozen=True)
class AnyOf(Criterion):
    """Some part holds (``a | b``)."""

    parts: tuple[Criterion, ...]

    def __call__(self, logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
        result = self.parts[0](logits, y, target)
        for part in self.parts[1:]:
            result = result | part(logits, y, target)
        return result

    @property
    def name(self) -> str:  # type: ignore[override]
        return " | ".join(f"({part.name})" if isinstance(part, All) else part.name for part in self.parts)


@dataclass(frozen=True)
class Not(Criterion):
    """The part does not hold (``~a``)."""

    part: Criterion

    def __call__(self, logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
        return ~self.part(logits, y, target)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"not ({self.part.name})"


def check_criterion(criterion: object) -> None:
    """Raise unless ``criterion`` can be called as ``criterion(logits, y, target)`` (the old two-argument form
    ``(logits, labels)`` cannot tell the true class from the target)."""
    if isinstance(criterion, Criterion):
        return
    try:
        inspect.signature(criterion).bind(None, None, None)  # type: ignore[arg-type]
    except TypeError:
        raise RobustlabError(
            f"criterion {criterion!r} must be callable as criterion(logits, y, target=None); subclass "
            "robustlab.criteria.Criterion or add the target argument"
        ) from None


__all__ = [
    "All",
    "AnyOf",
    "Criterion",
    "Misclassified",
    "NeverSucceeds",
    "Not",
    "TargetedMisclassified",
    "check_criterion",
    "interest_class_rank",
]
