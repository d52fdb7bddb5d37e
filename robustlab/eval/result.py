"""The per-sample outcome of an evaluation (:class:`EvalResult`): every figure in a report is derived from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from robustlab.eval.metrics import interest_class_rank


@dataclass
class EvalResult:
    """Per-sample outcome of an evaluation; every figure in a report is derived from these tensors."""

    labels: Tensor  # (N,)
    clean_logits: Tensor  # (N, C)
    clean_correct: Tensor  # bool (N,)
    attacked: dict[str, Tensor] = field(default_factory=dict)  # bool (N,): the attack ran on the sample
    broken: dict[str, Tensor] = field(default_factory=dict)  # bool (N,): top-1 wrong at the attack's x_adv
    criterion: dict[str, Tensor] = field(default_factory=dict)  # bool (N,): its criterion held (AttackResult.success)
    adv_logits: dict[str, Tensor] = field(default_factory=dict)  # (N, C): logits at the attack's x_adv
    robust_after: dict[str, Tensor] = field(default_factory=dict)  # bool (N,): still robust after it
    seconds: dict[str, float] = field(default_factory=dict)
    x_adv: Tensor | None = None  # (N, ...): the worst-case adversarial input per sample, if kept
    carried: Tensor | None = None  # bool (N,): nested eps: broken at a smaller eps, so here too (not attacked)
    carried_logits: Tensor | None = None  # (N, C): nested eps: logits at the example that broke it there
    forward_passes: dict[str, int] = field(default_factory=dict)  # images each attack ran forward through the model
    backward_passes: dict[str, int] = field(default_factory=dict)  # images whose input gradient each attack took
    clean_passes: int = 0  # images the evaluator itself ran forward: clean predictions, judging repeated passes

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def nonfinite(self) -> Tensor:
        """Per sample: the clean logits or some attack's logits hold NaN or inf (never correct, never robust)."""
        flags = ~torch.isfinite(self.clean_logits).all(1)
        for logits in self.adv_logits.values():
            flags |= ~torch.isfinite(logits).all(1)
        if self.carried is not None:
            flags |= self.carried & ~torch.isfinite(self.carried_logits).all(1)
        return flags

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct.float().mean().item()

    @property
    def robust(self) -> Tensor:
        """Per-sample worst case: correct and not broken by any attack."""
        flags = self.clean_correct.clone()
        if self.carried is not None:
            flags &= ~self.carried
        for broken in self.broken.values():
            flags &= ~broken
        return flags

    def breaking_logits(self) -> Tensor:
        """Per sample, the logits at the example that broke it (carried from a smaller eps, else the first attack
        that succeeded); the clean logits where nothing did."""
        logits, done = self.clean_logits.clone(), ~self.clean_correct
        if self.carried is not None:
            logits[self.carried] = self.carried_logits[self.carried]
            done = done | self.carried
        for name, broken in self.broken.items():
            take = broken & ~done
            logits[take] = self.adv_logits[name][take]
            done = done | take
        return logits

    @property
    def robust_accuracy(self) -> float:
        return self.robust.float().mean().item()

    def attack_success_rate(self) -> float:
        """Fraction of the clean-correct samples that some attack broke."""
        correct = self.clean_correct.sum().item()
        return (self.clean_correct & ~self.robust).sum().item() / correct if correct else 0.0

    def interest_class_rank(self, name: str) -> Tensor:
        """Per-sample rank of the true class at the attack's adversarial inputs (1 = top)."""
        return interest_class_rank(self.adv_logits[name], self.labels)

    def to_state(self) -> dict[str, Any]:
        """Plain tensors and numbers (for ``torch.save``/``torch.load(weights_only=True)``)."""
        state = {k: getattr(self, k) for k in ("labels", "clean_logits", "clean_correct", "x_adv")}
        if self.carried is not None:
            state.update(carried=self.carried, carried_logits=self.carried_logits)
        for k in ("attacked", "broken", "criterion", "adv_logits", "robust_after", "seconds"):
            state[k] = dict(getattr(self, k))
        state.update(forward_passes=dict(self.forward_passes), backward_passes=dict(self.backward_passes))
        state["clean_passes"] = self.clean_passes
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> EvalResult:
        """Inverse of :meth:`to_state`; a state saved before ``broken`` was named so holds it as ``success``."""
        state = {"broken": state["success"], **state} if "success" in state else state
        return cls(**{k: state[k] for k in cls.__dataclass_fields__ if k in state})

    def summary(self) -> dict[str, Any]:
        """The headline numbers, cumulative per attack as in AutoAttack's log."""
        return {
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "attack_success_rate": self.attack_success_rate(),
            "nonfinite": self.nonfinite.nonzero().squeeze(1).tolist(),
            "attacks": {
                name: {
                    "robust_accuracy_after": self.robust_after[name].float().mean().item(),
                    "attacked": int(self.attacked[name].sum().item()),
                    "broken": int(self.broken[name].sum().item()),
                    "seconds": round(self.seconds[name], 4),
                    "forward_passes": int(self.forward_passes.get(name, 0)),
                    "backward_passes": int(self.backward_passes.get(name, 0)),
                }
                for name in self.broken
            },
        }


__all__ = ["EvalResult"]
