"""Per-sample attack losses ``(logits, labels) -> (N,)``, registered by name.

Attacks maximise the loss of the true label (untargeted) or minimise it for the target label (targeted).
A *targeted loss* (:func:`targeted_loss`) takes both, ``(logits, target, y) -> (N,)``, and serves targeted
calls only: the targeted top-k loss drives the target up and the true class down.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from robustlab.errors import RobustlabError
from robustlab.registry import Registry

LossFn = Callable[[Tensor, Tensor], Tensor]
LOSSES: Registry[LossFn] = Registry("loss")


def register_loss(name: str, *aliases: str) -> Callable[[LossFn], LossFn]:
    """Register a per-sample loss under ``name`` and ``aliases`` (a decorator)."""
    return lambda fn: LOSSES.register(name, fn, aliases)


def _other_max(logits: Tensor, labels: Tensor) -> Tensor:
    """The largest logit among the classes other than ``labels``."""
    masked = logits.scatter(1, labels[:, None], float("-inf"))
    return masked.max(dim=1).values


@register_loss("ce", "cross-entropy")
def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of each sample."""
    return F.cross_entropy(logits, labels, reduction="none")


@register_loss("cw", "cw-margin")
def cw_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (positive once misclassified)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    return _other_max(logits, labels) - true


@register_loss("dlr")
def dlr(logits: Tensor, labels: Tensor) -> Tensor:
    """Difference of logits ratio (Croce & Hein 2020): the CW margin scaled by ``z_pi1 - z_pi3``."""
    if logits.shape[1] < 3:
        raise RobustlabError("the dlr loss needs at least 3 classes; use ce or cw")
    top = logits.sort(dim=1, descending=True).values
    return cw_margin(logits, labels) / (top[:, 0] - top[:, 2] + 1e-12)


@register_loss("normalized-ce", "rce")
def normalized_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Normalized (relative) CE of the top-k paper: ``CE(z, y) - mean_k CE(z, k) = mean_k z_k - z_y``.

    Its gradient w.r.t. the logits is the constant ``1/K - onehot(y)``, so it keeps pushing the true
    class down the ranking after the top-1 label has flipped.
    """
    return logits.mean(dim=1) - logits.gather(1, labels[:, None]).squeeze(1)


def targeted_loss(fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """Mark ``fn(logits, target, y)`` as a targeted loss: attacks pass it the targets and the true labels."""
    fn.targeted = True  # type: ignore[attr-defined]
    return fn


def is_targeted_loss(fn: object) -> bool:
    """Whether ``fn`` takes ``(logits, target, y)`` (see :func:`targeted_loss`)."""
    return bool(getattr(fn, "targeted", False))


@register_loss("topk-targeted")
@targeted_loss
def topk_targeted(logits: Tensor, target: Tensor, y: Tensor) -> Tensor:
    """Targeted top-k loss, to be minimised: ``CE(z, t) + (z_y - mean_k z_k)``.

    The CE term drives the target ``t`` to rank 1 and saturates once it is there; the second term is minus the
    normalized CE of the true class ``y``, whose constant logit-gradient keeps pushing ``y`` down the ranking.
    """
    return F.cross_entropy(logits, target, reduction="none") - normalized_ce(logits, y)


@register_loss("dlr-targeted")
@targeted_loss
def dlr_targeted(logits: Tensor, target: Tensor, y: Tensor) -> Tensor:
    """Targeted DLR of APGD-T (Croce & Hein 2020), to be minimised: ``(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``.

    The denominator makes it invariant to shifts and scalings of the logits (gradient masking by scale is undone).
    """
    if logits.shape[1] < 4:
        raise RobustlabError("the targeted dlr loss needs at least 4 classes; use the ce or cw loss")
    top = logits.topk(4, dim=1).values
    gap = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, target[:, None]).squeeze(1)
    return gap / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


def get_loss(name: str | LossFn) -> LossFn:
    """Look up a loss by name or alias, case-insensitive, ``_`` = ``-`` (or pass a callable through)."""
    return name if callable(name) else LOSSES.get(name)


def loss_names() -> list[str]:
    """The registered untargeted losses, the choices of ``--loss`` (targeted ones serve targeted calls only)."""
    return [name for name in LOSSES if not is_targeted_loss(LOSSES.get(name))]


__all__ = [
    "LOSSES",
    "cross_entropy",
    "cw_margin",
    "dlr",
    "dlr_targeted",
    "get_loss",
    "is_targeted_loss",
    "loss_names",
    "normalized_ce",
    "register_loss",
    "targeted_loss",
    "topk_targeted",
]
