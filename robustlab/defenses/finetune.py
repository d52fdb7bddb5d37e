"""Robust fine-tuning protocols of (SSL) encoders, and the TRADES loss.

- **SLF** (standard linear fine-tuning): frozen encoder (eval mode), a linear head trained on clean data.
- **ALF** (adversarial linear fine-tuning): frozen encoder, the head trained on PGD examples of the classifier.
- **AFF** (adversarial full fine-tuning): every weight trained with TRADES (beta 6, 10 steps).

Each is a training :class:`Method` for the classifier made by :func:`prepare_classifier`, which is a plain
robustlab classifier (``robustlab attack``/``eval`` take it directly).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks.base import GradientAttack
from robustlab.attacks.presets import PGD
from robustlab.criteria import NeverSucceeds
from robustlab.defenses.loop import SeededMethod
from robustlab.defenses.ssl import classifier_head, replace_head
from robustlab.distributed import unwrap
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel

log = logging.getLogger(__name__)

PROTOCOLS = ("slf", "alf", "aff")


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
    x_adv = attack(unwrap(model), x, p_clean, threat).x_adv
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


def prepare_classifier(
    net: nn.Module, protocol: str, num_classes: int, keep_head: bool = False, seed: int = 0
) -> nn.Module:
    """Give the encoder's classifier a fresh head drawn from ``seed`` (or, with ``keep_head``, start from its own,
    e.g. an SLF head); freeze the encoder for SLF/ALF, unfreeze everything for AFF."""
    if protocol not in PROTOCOLS:
        raise RobustlabError(f"unknown fine-tuning protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    net.requires_grad_(protocol == "aff")
    head = classifier_head(net)
    if keep_head and head.out_features != num_classes:
        raise RobustlabError(
            f"the encoder's head has {head.out_features} outputs but the dataset {num_classes} classes; "
            "drop --keep-head to train a fresh head"
        )
    if not keep_head:
        head = replace_head(net, num_classes, seed)
    head.requires_grad_(True)
    return net


@contextlib.contextmanager
def frozen_encoder(model: nn.Module) -> Iterator[None]:
    """Everything but the linear head in eval mode (a frozen encoder keeps its batch-norm statistics)."""
    net = unwrap(model)
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    classifier_head(net).train(modes[0][1])
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class FineTune(SeededMethod):
    """SLF / ALF / AFF as a training :class:`Method` for a classifier from :func:`prepare_classifier`.

    Args:
        protocol: slf, alf or aff.
        threat: the threat model of ALF's PGD and AFF's TRADES.
        steps, step_size: the inner attack (default 10 steps; PGD's 2.5 eps/steps for ALF, eps/4 for TRADES).
        beta: TRADES' robustness weight for AFF (default 6).
    """

    def __init__(
        self,
        protocol: str = "slf",
        threat: ThreatModel | None = None,
        steps: int = 10,
        step_size: float | None = None,
        beta: float = 6.0,
        seed: int = 0,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise RobustlabError(f"unknown fine-tuning protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
        if protocol != "slf" and threat is None:
            raise RobustlabError(f"{protocol} is adversarial: give a threat model (--eps)")
        self.name = protocol
        self.threat = threat
        self.beta = beta
        self.seed = seed
        self.attack: GradientAttack | None = None
        if protocol == "alf":
            self.attack = PGD(steps=steps, step_size=step_size, seed=seed)
        elif protocol == "aff":
            self.attack = trades_attack(steps, step_size, seed)

    def training_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """SLF: CE on clean inputs; ALF: CE on PGD inputs (encoder frozen); AFF: TRADES on all weights."""
        if self.attack is not None:
            self.attack.seed = self.attack_seed(x.device)
        if self.name == "aff":
            return trades_loss(model, x, y, self.threat, self.beta, self.attack)
        with frozen_encoder(model):
            if self.name == "alf":
                x = self.attack(unwrap(model), x, y, self.threat).x_adv
            logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.item(), "accuracy": (logits.argmax(1) == y).float().mean().item()}


__all__ = [
    "PROTOCOLS",
    "FineTune",
    "frozen_encoder",
    "kl_to_clean",
    "prepare_classifier",
    "trades_attack",
    "trades_loss",
]
