"""BPDA attacks: any attack run on the model with :class:`~robustlab.models.bpda.BPDA` placed on some of its modules
(identity backward by default), e.g. BPDA-PGD through an input-quantisation layer, or with the identity backward over
the whole input pipeline. The forward pass is unchanged, so
the result's logits and success are the real model's."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from robustlab.attacks.protocol import Attack, AttackBase, AttackResult, as_attack
from robustlab.errors import RobustlabError
from robustlab.models.bpda import bpda, straight_through
from robustlab.threat import ThreatModel


class BPDAAttack(AttackBase):
    """``attack`` with BPDA on the modules ``modules`` (names as ``model.named_modules()`` gives them), or, with
    ``before``, the identity backward over the whole input pipeline up to module ``before``
    (:func:`~robustlab.models.bpda.straight_through`: for a transform no module name can reach)."""

    def __init__(
        self, attack: Attack, modules: Sequence[str] = (), backward: nn.Module | None = None, before: str | None = None
    ) -> None:
        if not modules and not before:
            raise RobustlabError("BPDA needs at least one module name, e.g. modules=['preprocess']")
        if modules and before:
            raise RobustlabError("BPDA takes module names or an input stage (before=...), not both")
        self.attack, self.modules, self.backward, self.before = as_attack(attack), list(modules), backward, before
        self.name = f"bpda-{self.attack.name}"

    @property
    def per_sample(self) -> bool:
        """The inner attack's: whether a sample's result is independent of its batch."""
        return self.attack.per_sample

    def resolve_step_size(self, threat: ThreatModel) -> float | None:
        """The inner attack's step size."""
        return self.attack.resolve_step_size(threat)

    def config(self) -> dict:
        """The inner attack's configuration and where BPDA sits."""
        if self.before:
            return {**self.attack.config(), "bpda": f"input pipeline before {self.before}", "bpda_backward": "identity"}
        backward = "identity" if self.backward is None else type(self.backward).__name__
        return {**self.attack.config(), "bpda": self.modules, "bpda_backward": backward}

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        """Run the inner attack with BPDA in place; the modules are restored afterwards."""
        place = straight_through(model, self.before) if self.before else bpda(model, self.modules, self.backward)
        with place:
            if target is None:
                return self.attack(model, x, y, threat)
            return self.attack(model, x, y, threat, target=target)


__all__ = ["BPDAAttack"]
