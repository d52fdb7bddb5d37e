"""Adaptive evaluation: the attacks that answer each gradient-masking flag, so the headline never overstates.

When a sanity flag fires (Athalye et al. 2018; Tramer et al. 2020's checklist), the evaluation adds the attack
that answers it and reports the worst case over everything run: zero/NaN gradients -> BPDA-PGD (identity backward on
the modules that cut the gradient) and Square, plus transfer from a surrogate if one is given; a random forward pass
-> EOT-PGD and correctness judged over repeated predictions; black-box beats white-box -> Square; robust accuracy
rising with steps or eps -> PGD with more steps and restarts. ``adaptive="off"`` adds nothing and marks the headline
as unreliable when a flag fired.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from robustlab.attacks import PGD, AutoAttack, TransferAttack, attack_from_spec
from robustlab.attacks.bpda import BPDAAttack
from robustlab.eval.sanity import Flag
from robustlab.models.bpda import masking_modules

log = logging.getLogger(__name__)

MODES = ("on", "off")
UPPER_BOUND = "an upper bound on the true robust accuracy, like every attack-based figure"


@dataclass
class AdaptivePlan:
    """What the adaptive step decided: the attacks added (in order) and why, the judgement, the headline's worth."""

    mode: str
    fired: list[str] = field(default_factory=list)
    attacks: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    predictions: int = 1
    headline: str = UPPER_BOUND
    bpda_modules: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "fired": self.fired, "added": self.reasons, "predictions": self.predictions,
            "bpda_modules": self.bpda_modules, "headline": self.headline,
        }  # fmt: skip


def plan_adaptive(
    model: nn.Module, x: Tensor, y: Tensor, flags: list[Flag] | None, config: Any, existing: list[str],
    surrogate: nn.Module | None = None,
) -> AdaptivePlan:  # fmt: skip
    """The attacks to add for the fired ``flags`` (``None``: the checks were skipped); ``x, y`` are the sanity
    samples (to find the modules that cut the gradient). ``config`` is the :class:`~robustlab.eval.EvalConfig`."""
    plan = AdaptivePlan(config.adaptive, [f.name for f in flags or [] if f.fired], predictions=config.predictions)
    if flags is None:
        plan.headline = f"{UPPER_BOUND}; NOT checked for gradient masking (the sanity checks were skipped)"
        return plan
    if not plan.fired:
        plan.headline = f"{UPPER_BOUND}; no gradient-masking flag fired"
        return plan
    if config.adaptive == "off":
        plan.headline = (
            f"UNRELIABLE: flags {', '.join(plan.fired)} fired and --adaptive off added no adaptive attack; the figure "
            "may overstate robustness"
        )
        return plan
    steps, seed = max(20, config.steps or 10), config.seed
    fired = set(plan.fired)

    def add(name: str, attack: Any, reason: str) -> None:
        if attack is not None and name not in existing and name not in plan.attacks:
            plan.attacks[name] = attack
            plan.reasons[name] = reason

    if "zero_or_nan_gradients" in fired:
        plan.bpda_modules = masking_modules(model, x[:8])
        if plan.bpda_modules:
            add(
                f"bpda-pgd(steps={steps})[{','.join(plan.bpda_modules)}]",
                BPDAAttack(PGD(steps=steps, seed=seed), plan.bpda_modules),
                f"zero/NaN input gradients: BPDA with identity backward on {', '.join(plan.bpda_modules)}",
            )
        if surrogate is not None:
            add("transfer-pgd", TransferAttack(PGD(steps=steps, seed=seed), surrogate, name="transfer-pgd"),
                "zero/NaN input gradients: PGD crafted on the surrogate")  # fmt: skip
    if fired & {"zero_or_nan_gradients", "blackbox_beats_whitebox"}:
        square = f"autoattack:square(n_queries={config.adaptive_queries})"
        add(square, AutoAttack(attacks=["square"], n_queries=config.adaptive_queries, seed=seed),
            "a black-box attack: zero/NaN gradients or black-box beating white-box")  # fmt: skip
    if fired & {"random_forward", "eps_zero_not_clean"}:
        eot = f"pgd(steps={steps},eot_samples={config.eot_samples})"
        add(eot, attack_from_spec(eot, seed=seed),
            f"random forward pass: the input gradient averaged over {config.eot_samples} passes (EOT)")  # fmt: skip
        plan.predictions = max(plan.predictions, config.eot_samples)
    if fired & {"rises_with_steps", "rises_with_eps"}:
        more = f"pgd(steps={4 * steps},restarts=3)"
        add(more, attack_from_spec(more, seed=seed), "robust accuracy rises with steps or eps: more steps, restarts")
    added = ", ".join(plan.attacks) or "none could be added"
    plan.headline = (
        f"{UPPER_BOUND}; flags {', '.join(plan.fired)} fired, so the worst case also covers the adaptive attacks "
        f"added ({added})" + (f" and correctness over {plan.predictions} passes" if plan.predictions > 1 else "")
    )
    return plan


__all__ = ["MODES", "AdaptivePlan", "plan_adaptive"]
