"""Robust fine-tuning protocols of (SSL) encoders.

- **SLF** (standard linear fine-tuning): frozen encoder (eval mode), a linear head trained on clean data.
- **ALF** (adversarial linear fine-tuning): frozen encoder, the head trained on PGD examples of the classifier.
- **AFF** (adversarial full fine-tuning): every weight trained with TRADES (beta 6, 10 steps; ``trades.py``).

Each is a training :class:`Method` for the classifier made by :func:`prepare_classifier`, which is a plain
robustlab classifier (``robustlab attack``/``eval`` take it directly).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks.base import GradientAttack
from robustlab.attacks.presets import PGD
from robustlab.distributed import unwrap
from robustlab.errors import RobustlabError
from robustlab.models.mode import temporary_mode
from robustlab.ssl.encoder import classifier_head, replace_head
from robustlab.ssl.trades import trades_attack, trades_loss
from robustlab.threat import ThreatModel
from robustlab.training.method import Method, check_number

log = logging.getLogger(__name__)

PROTOCOLS = ("slf", "alf", "aff")


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
    training = net.training
    with temporary_mode(net, training=False):
        classifier_head(net).train(training)
        yield


class FineTune(Method):
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
        check_number("beta (--beta)", beta)
        self.name = protocol
        self.threat = threat
        self.beta = beta
        self.seed = seed
        self.attack: GradientAttack | None = None
        if protocol == "alf":
            self.attack = PGD(steps=steps, step_size=step_size, seed=seed)
        elif protocol == "aff":
            self.attack = trades_attack(steps, step_size, seed)

    def config(self) -> dict[str, Any]:
        info: dict[str, Any] = {"method": self.name, "threat": self.threat.to_dict() if self.threat else None}
        if self.attack is not None:
            info.update(steps=self.attack.steps, step_size=self.attack.resolve_step_size(self.threat))
        if self.name == "aff":
            info["beta"] = self.beta
        return info

    def training_loss(self, model: nn.Module, x: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        """SLF: CE on clean inputs; ALF: CE on PGD inputs (encoder frozen); AFF: TRADES on all weights."""
        if self.attack is not None:
            self.attack.seed = self.attack_seed(x.device)
        if self.name == "aff":
            return trades_loss(model, x, labels, self.threat, self.beta, self.attack)
        with frozen_encoder(model):
            if self.name == "alf":
                x = self.attack.perturb(unwrap(model), x, labels, self.threat)
            logits = model(x)
        loss = F.cross_entropy(logits, labels)
        return loss, {"loss": loss.item(), "accuracy": (logits.argmax(1) == labels).float().mean().item()}


__all__ = ["PROTOCOLS", "FineTune", "frozen_encoder", "prepare_classifier"]
