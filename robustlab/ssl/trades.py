"""TRADES (Zhang et al. 2019): clean cross-entropy plus beta * KL to the clean prediction at the point that
maximises it; the objective of AFF and of pseudo-AT with ``--loss trades``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks.base import GradientAttack
from robustlab.criteria import NeverSucceeds
from robustlab.distributed import unwrap
from robustlab.threat import ThreatModel


def kl_to_clean(logits_adv: Tensor, p_clean: Tensor) -> Tensor:
    """Per-sample ``KL(p_clean || softmax(logits_adv))``: TRADES' inner loss (float targets: probabilities)."""
    log_p_adv = F.log_softmax(logits_adv, dim=1)
    return (p_clean * (p_clean.clamp_min(1e-12).log() - log_p_adv)).sum(dim=1)


def trades_attack(steps: int = 10, step_size: float | None = None, seed: int = 0) -> GradientAttack:
    """TRADES' inner maximisation of :func:`kl_to_clean`: the one gradient loop, random start, no early stop.

    (TRADES starts at ``x + 0.001 * N(0, 1)``; here the start is uniform in the eps-ball, as in PGD.)
    """
    return GradientAttack(
        steps=steps, step_size=step_size, loss=kl_to_clean, random_start=True, criterion=NeverSucceeds(), seed=seed
    )


def trades_loss(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, beta: float = 6.0, attack: GradientAttack | None = None
) -> tuple[Tensor, dict[str, float]]:
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x'))``, x' maximising the KL."""
    attack = attack or trades_attack()
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    x_adv = attack.perturb(unwrap(model), x, p_clean, threat)
    logits_clean, logits_adv = model(torch.cat([x, x_adv])).chunk(2)
    natural = F.cross_entropy(logits_clean, y)
    robust = kl_to_clean(logits_adv, F.softmax(logits_clean, dim=1)).mean()
    loss = natural + beta * robust
    stats = {
        "loss": loss.item(),
        "ce": natural.item(),
        "kl": robust.item(),
        "accuracy": (logits_clean.argmax(1) == y).float().mean().item(),
        "adv_accuracy": (logits_adv.argmax(1) == y).float().mean().item(),
    }
    return loss, stats


__all__ = ["kl_to_clean", "trades_attack", "trades_loss"]
