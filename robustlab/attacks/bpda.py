"""BPDA attacks: any attack run on the model with :class:`~robustlab.models.bpda.BPDA` placed on some of its modules
(identity backward by default), e.g. BPDA-PGD through an input-quantisation layer. The forward pass is unchanged, so
the result's logits and success are the real model's."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from robustlab.attacks.protocol import Attack, AttackResult
from robustlab.errors import RobustlabError
from robustlab.models.bpda import bpda
from robustlab.threat import ThreatModel


class BPDAAttack:
    """``attack`` with BPDA on the modules ``modules`` (names as ``model.named_modules()`` gives them)."""

    def __init__(self, attack: Attack, modules: Sequence[str], backward: nn.Module | None = None) -> None:
        if not modules:
            raise RobustlabError("BPDA needs at least one module name, e.g. modules=['preprocess']")
        self.attack, self.modules, self.backward = attack, list(modules), backward
        self.name = f"bpda-{getattr(attack, 'name', 'attack')}"

    @property
    def per_sample(self) -> bool:
        """The inner attack's: whether a sample's result is independent of its batch."""
        return bool(getattr(self.attack, "per_sample", False))

    def config(self) -> dict:
        """The inner attack's configuration and where BPDA sits."""
        backward = "identity" if self.backward is None else type(self.backward).__name__
        return {**self.attack.config(), "bpda": self.modules, "bpda_backward": backward}

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        """Run the inner attack with BPDA in place; the modules are restored afterwards."""
        with bpda(model, self.modules, self.backward):
            if target is None:
                return self.attack(model, x, y, threat)
            return self.attack(model, x, y, threat, target=target)


__all__ = ["BPDAAttack"]
