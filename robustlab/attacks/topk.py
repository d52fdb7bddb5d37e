"""The top-k attack (Zhang et al., CVPR 2022): push the true class out of the top k, not just off rank 1.

:class:`TopK` is a configuration of the one gradient loop (I-FGSM, PGD or MI-FGSM) with the normalized CE
loss and the top-k success criterion :class:`~robustlab.criteria.Misclassified` ``(k)``, so early stopping
and restarts mean "out of the top k". Called with a ``target`` it drives the target to rank 1 while pushing
the true class down the ranking (loss :func:`topk_targeted`, criterion :class:`TargetedTopK`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks.presets import IFGSM, MIFGSM, PGD
from robustlab.attacks.protocol import AttackResult
from robustlab.criteria import Misclassified, interest_class_rank
from robustlab.errors import RobustlabError
from robustlab.losses import LossFn, get_loss, normalized_ce, register_loss
from robustlab.threat import ThreatModel

BASES = {"ifgsm": IFGSM, "pgd": PGD, "mifgsm": MIFGSM}


def _split_pair(labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(N, 2)`` labels ``[target, true]`` -> ``(target, true)``."""
    if labels.dim() != 2 or labels.shape[1] != 2:
        raise RobustlabError(
            "the topk-targeted loss takes labels of shape (N, 2) holding [target, true class]; use it through "
            "TopK(...)(model, x, y, threat, target=...) rather than as an untargeted --loss"
        )
    return labels[:, 0], labels[:, 1]


@register_loss("topk-targeted")
def topk_targeted(logits: Tensor, labels: Tensor) -> Tensor:
    """Targeted top-k loss, to be minimised: ``CE(z, t) + (z_y - mean_k z_k)`` for labels ``[t, y]``.

    The CE term drives the target ``t`` to rank 1 and saturates once it is there; the second term is minus the
    normalized CE of the true class ``y``, whose constant logit-gradient keeps pushing ``y`` down the ranking.
    """
    target, true = _split_pair(labels)
    return F.cross_entropy(logits, target, reduction="none") - normalized_ce(logits, true)


def on_target(loss: str | LossFn) -> LossFn:
    """Lift an ordinary loss ``(logits, target)`` to the ``[target, true]`` label pairs of targeted TopK."""
    fn = get_loss(loss)

    def lifted(logits: Tensor, labels: Tensor) -> Tensor:
        return fn(logits, _split_pair(labels)[0])

    lifted.__name__ = getattr(fn, "__name__", "custom")
    return lifted


@dataclass(frozen=True)
class TargetedTopK:
    """Targeted top-k success for labels ``[target, true]``: the target is top-1 and the true class is out of
    the top k (for k = 1 this is plain targeted success, as the true class then cannot be top-1)."""

    k: int = 1

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        target, true = _split_pair(labels)
        return (logits.argmax(dim=1) == target) & (interest_class_rank(logits, true) > self.k)

    @property
    def name(self) -> str:
        return f"targeted-top{self.k}"


class TopK:
    """Top-k attack: I-FGSM / PGD / MI-FGSM with the normalized CE loss and a top-k success criterion.

    Args:
        k: success means the true class is out of the top k (targeted: the target is top-1 as well).
        base: the iterative attack it configures: ``ifgsm``, ``pgd`` or ``mifgsm``.
        loss: untargeted loss (default ``normalized-ce``; ``ce``/``cw`` for comparison at equal budget).
        targeted_loss: loss of targeted calls on ``[target, true]`` pairs (default ``topk-targeted``); any
            ordinary loss name (e.g. ``ce``) is applied to the target alone.
        early_stop: stop updating a sample once it is out of the top k. Off by default: top-k ASR for
            several k is measured after a fixed number of steps, as in the paper.
        **kwargs: the base attack's options (``steps``, ``step_size``, ``restarts``, ``momentum``,
            ``diversity_prob``, ``seed``, ...).
    """

    def __init__(
        self,
        k: int = 1,
        base: str = "ifgsm",
        loss: str | LossFn = "normalized-ce",
        targeted_loss: str | LossFn = "topk-targeted",
        early_stop: bool = False,
        **kwargs: Any,
    ) -> None:
        if int(k) != k or k < 1:
            raise RobustlabError(f"k must be a whole number >= 1, got {k!r}")
        key = base.lower().replace("-", "").replace("_", "")
        if key not in BASES:
            raise RobustlabError(f"TopK builds on {', '.join(BASES)}, not {base!r}")
        self.k = int(k)
        self.base = key
        self.untargeted = BASES[key](loss=loss, criterion=Misclassified(self.k), early_stop=early_stop, **kwargs)
        pair_loss = get_loss(targeted_loss) if targeted_loss == "topk-targeted" else on_target(targeted_loss)
        self.targeted = BASES[key](loss=pair_loss, criterion=TargetedTopK(self.k), early_stop=early_stop, **kwargs)
        self.targeted.loss_name = targeted_loss if isinstance(targeted_loss, str) else self.targeted.loss_name
        self.name = f"topk-{key}"

    def config(self) -> dict:
        """The attack's configuration, for reports."""
        return {**self.untargeted.config(), "attack": self.name, "k": self.k, "targeted_loss": self.targeted.loss_name}

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        """Untargeted: push ``y`` out of the top k. Targeted: ``target`` to rank 1 and ``y`` out of the top k."""
        if target is None:
            result = self.untargeted(model, x, y, threat)
        else:
            if target.shape != y.shape:
                raise RobustlabError(f"targets of shape {tuple(target.shape)} do not match labels {tuple(y.shape)}")
            if bool((target == y).any()):
                raise RobustlabError("a target equals the true class; choose targets different from the labels")
            result = self.targeted(model, x, y, threat, target=torch.stack([target, y], dim=1))
            result.info["target"] = target
        result.info.update(attack=self.name, k=self.k)
        return result


__all__ = ["BASES", "TargetedTopK", "TopK", "on_target", "topk_targeted"]
