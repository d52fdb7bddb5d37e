"""How much the sanity checks may spend: a share of what the evaluation's attacks will spend, so the checks stay
proportional to the work (a default eval of 500 images or more: at most a quarter of the attack passes).

The attacks' cost is estimated from the checks' own shared PGD run before the expensive checks start: a sample
that PGD leaves robust costs the attacks their whole budget (:func:`robust_passes`), one that PGD breaks about what
PGD spent on it (the attacks stop a sample at the first iterate that breaks it). The expensive checks (more steps
and restarts, the eps curve, eps 0, the black-box attack) then run on as many of the first samples as fit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from robustlab.attacks.square import Square
from robustlab.eval.progress import expected_passes

CLASSES = 10  # MALT's ranking takes one input gradient per class; an estimate needs a class count before the model


def robust_passes(attack: Any) -> int | None:
    """Forward + backward passes ``attack`` spends on a sample it never breaks, where its settings say (a staged
    protocol or preset: its members summed; APGD-T: per target; Square: its queries); ``None`` where they do not."""
    members = getattr(attack, "members", None)
    if isinstance(members, Mapping):
        parts = [robust_passes(member) for member in members.values()]
        return None if any(p is None for p in parts) else sum(parts)  # type: ignore[misc]
    runs, targets = getattr(attack, "runs", None), getattr(attack, "targets", None)
    if isinstance(runs, list) and runs and isinstance(targets, int):
        one = robust_passes(runs[0])
        ranking = CLASSES + 1 if getattr(attack, "ranking", "logits") == "malt" else 1
        return None if one is None else targets * one + ranking
    if isinstance(attack, Square):
        return (attack.max_queries or attack.n_queries) * attack.restarts + 1
    forward = expected_passes(attack)  # (steps + 1) x restarts
    if forward is None:
        return None
    return (2 * forward - getattr(attack, "restarts", 1)) * getattr(attack, "eot_samples", 1)


@dataclass(frozen=True)
class SanityBudget:
    """The checks' share of an evaluation of ``n`` samples whose attacks spend ``per_robust`` passes on a sample
    none of them breaks. The estimate aims at ``aim`` (a fifth: an estimate a quarter off stays within a quarter);
    PGD runs first on ``pilot`` samples, and the expensive checks take at least ``minimum`` (a flag can still fire)."""

    n: int
    per_robust: int
    aim: float = 0.2
    pilot: int = 32
    minimum: int = 16

    @classmethod
    def of(cls, attacks: Mapping[str, Any], data: Any) -> SanityBudget | None:
        """The budget of an evaluation of ``data`` (a dataset or an ``(x, y)`` pair) under ``attacks``; ``None`` (no
        limit) when an attack's cost is not known from its settings (an adapter: pyautoattack, torchattacks)."""
        parts = [robust_passes(attack) for attack in attacks.values()]
        if not parts or any(p is None for p in parts):
            return None
        return cls(len(data[1]) if isinstance(data, tuple) else len(data), sum(parts))  # type: ignore[arg-type]

    def samples(self, k: int, pilot: int, survivors: int, pgd: int, steps: int, queries: int, spent: int) -> int:
        """How many of the ``k`` samples the expensive checks take, given that PGD-``steps`` left ``survivors`` of
        the ``pilot`` samples robust with ``pgd`` passes, the checks spent ``spent`` so far and Square takes
        ``queries`` per survivor."""
        robust, per_pgd = survivors / max(pilot, 1), pgd / max(pilot, 1)
        broken = max(per_pgd - robust * (2 * steps + 1), 0.0)  # what a broken sample costs the attacks, about
        allowance = self.aim * self.n * (robust * self.per_robust + broken) - spent
        # per sample: PGD at eps, at eps / 2 (up to all steps), 40 steps and 3 restarts (up to 7 x PGD), 2eps, eps 0
        per_sample = 9 * per_pgd + 2 * steps + 6 + queries * robust
        return max(min(math.floor(allowance / per_sample), k), min(self.minimum, k))


__all__ = ["SanityBudget", "robust_passes"]
