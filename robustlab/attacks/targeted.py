"""Targeted attacks: pick a target class per sample, then run any attack towards it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustlab.attacks import options
from robustlab.attacks.protocol import Attack, AttackBase, AttackResult, as_attack, model_logits, untouched
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel

RULES = ("random", "least-likely")


def choose_targets(rule: str | int, logits: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Targets by rule: a class index, ``random`` (uniform over the other classes) or ``least-likely``."""
    num_classes = logits.shape[1]
    if isinstance(rule, int) or str(rule).lstrip("-").isdigit():
        target = int(rule)
        if not 0 <= target < num_classes:
            raise RobustlabError(f"target class {target} is out of range; the model has classes 0..{num_classes - 1}")
        return torch.full_like(labels, target)
    if rule == "random":
        device = generator.device if generator is not None else labels.device
        offset = torch.randint(1, num_classes, labels.shape, generator=generator, device=device)
        return (labels + offset.to(labels.device)) % num_classes
    if rule == "least-likely":
        return logits.argmin(dim=1)
    raise RobustlabError(f"unknown target rule {rule!r}; give a class index, random or least-likely")


class Targeted(AttackBase):
    """Wraps an attack so that the evaluator's ``attack(model, x, y, threat)`` call becomes targeted: the targets
    are chosen per sample by ``rule`` (a class index, ``random`` drawn from ``seed``, or ``least-likely``)."""

    def __init__(self, attack: Attack, rule: str | int = "random", seed: int = 0) -> None:
        if not (rule in RULES or str(rule).isdigit()):
            raise RobustlabError(f"unknown target rule {rule!r}; give a class index, {' or '.join(RULES)}")
        self.attack = as_attack(attack)
        self.rule = rule
        self.seed = options.seed(seed)
        self.name = f"{self.attack.name}-targeted"

    def resolve_step_size(self, threat: ThreatModel) -> float | None:
        """The wrapped attack's step size."""
        return self.attack.resolve_step_size(threat)

    def config(self) -> dict:
        """The wrapped attack's configuration and the target rule, for reports."""
        return {**self.attack.config(), "target": self.rule}

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        """Choose targets by the rule (or take the given ``target``) and run the wrapped attack towards them."""
        if target is not None:
            result = self.attack(model, x, y, threat, target=target)
            result.info["target"] = target
            return result
        generator = torch.Generator(device=x.device)
        generator.manual_seed(self.seed)
        with torch.no_grad(), untouched(model, x.device):
            logits = model_logits(model, x)
        target = choose_targets(self.rule, logits, y, generator)
        result = self.attack(model, x, y, threat, target=target)
        result.info["target"] = target
        return result
