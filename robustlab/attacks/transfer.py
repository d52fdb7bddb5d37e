"""Transfer (black-box) attacks: craft on a surrogate, or an ensemble of them, and evaluate on other models.

Momentum (MI) and input diversity (DI) are options of the one gradient loop (``momentum``,
``diversity_prob``), not separate attacks; this module adds the ensemble surrogate and the wrapper that
makes "craft on the surrogate, judge on the target" an ordinary attack for the evaluator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from robustlab.attacks.protocol import Attack, AttackBase, AttackResult, as_attack, model_logits, untouched
from robustlab.criteria import Criterion, Misclassified, TargetedMisclassified, check_criterion
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel


class Ensemble(nn.Module):
    """A surrogate whose logits are the (weighted) average of its members' logits (Liu et al. 2017)."""

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not models:
            raise RobustlabError("an ensemble needs at least one model")
        if weights is not None and (len(weights) != len(models) or any(w < 0 for w in weights) or sum(weights) <= 0):
            raise RobustlabError(f"give one non-negative weight per model ({len(models)}), not all zero")
        self.members = nn.ModuleList(models)
        # mirror the members' mode (here and on the container) without switching theirs
        self.training = self.members.training = any(m.training for m in models)
        total = float(sum(weights)) if weights is not None else float(len(models))
        self.register_buffer(
            "weights", torch.tensor([w / total for w in (weights or [1.0] * len(models))]), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        outputs = [model_logits(m, x) for m in self.members]
        if len({o.shape[1] for o in outputs}) > 1:
            raise RobustlabError(
                f"ensemble members disagree on the number of classes ({sorted({o.shape[1] for o in outputs})})"
            )
        return sum(w * o for w, o in zip(self.weights.to(outputs[0].dtype), outputs))


class TransferAttack(AttackBase):
    """An attack on ``model`` that only ever uses ``surrogate``'s gradients (black-box transfer).

    Called like any attack, ``transfer(model, x, y, threat)``: it crafts ``x_adv`` with ``attack`` on the
    surrogate, then reports the attacked model's logits and its success at ``x_adv`` under ``criterion``
    (default: misclassified, or the target top-1 for targeted calls). ``info["surrogate_success"]`` holds
    the white-box success on the surrogate.
    """

    def __init__(
        self, attack: Attack, surrogate: nn.Module, criterion: Criterion | None = None, name: str | None = None
    ) -> None:
        if criterion is not None:
            check_criterion(criterion)
        self.attack = as_attack(attack)
        self.surrogate = surrogate
        self.criterion = criterion
        self.name = name or f"transfer-{self.attack.name}"

    @property
    def per_sample(self) -> bool:
        """The inner attack's: whether a sample's result is independent of its batch."""
        return self.attack.per_sample

    def resolve_step_size(self, threat: ThreatModel) -> float | None:
        """The crafting attack's step size."""
        return self.attack.resolve_step_size(threat)

    def config(self) -> dict:
        """The crafting attack's configuration, for reports."""
        return {**self.attack.config(), "transfer": True}

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        """Craft on the surrogate, judge on ``model``."""
        if target is None:
            crafted = self.attack(self.surrogate, x, y, threat)
        else:
            crafted = self.attack(self.surrogate, x, y, threat, target=target)
        with torch.no_grad(), untouched(model, x.device):
            logits = model_logits(model, crafted.x_adv)
        criterion = self.criterion or (Misclassified() if target is None else TargetedMisclassified())
        success = criterion(logits, y, target)
        info = {**crafted.info, "surrogate_success": crafted.success}
        return AttackResult(crafted.x_adv, success, crafted.loss, logits, info)


__all__ = ["Ensemble", "TransferAttack"]
