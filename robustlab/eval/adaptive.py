"""Adaptive evaluation: the attacks that answer each gradient-masking flag, so the headline never overstates.

When a sanity flag fires (Athalye et al. 2018; Tramer et al. 2020's checklist), the evaluation adds the attack that
answers it and reports the worst case over everything run. Where gradients vanish is found by behaviour
(:func:`~robustlab.eval.indicators.gradient_behaviour`: zero or NaN input gradients while the output moves, or a
staircase response to small input changes), not by module name. Useless gradients get BPDA-PGD (identity backward on
the modules found to cut the gradient, else on the whole input pipeline up to the first layer with weights, which also
reaches a rounding inside ``forward``), a black-box Square whose budget grows until a block of queries breaks nothing,
and transfer from a surrogate if one is given; a random forward pass gets EOT-PGD and correctness judged over repeated
predictions; black-box beating white-box gets the growing Square; robust accuracy rising with steps or eps gets PGD
with more steps and restarts. Each fired flag is answered or said plainly to be unanswered. ``adaptive="off"`` adds
nothing and marks the headline as unreliable when a flag fired.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from robustlab.attacks import PGD, TransferAttack, attack_from_spec
from robustlab.attacks.bpda import BPDAAttack
from robustlab.attacks.square import Square
from robustlab.eval.flags import FlagKind
from robustlab.eval.indicators import GradientBehaviour, gradient_behaviour
from robustlab.eval.sanity import Flag
from robustlab.models.bpda import bpda, input_stage, masking_modules, straight_through
from robustlab.threat import ThreatModel

log = logging.getLogger(__name__)

MODES = ("on", "off")
UPPER_BOUND = "an upper bound on the true robust accuracy, like every attack-based figure"
GROWTH = 10  # the growing Square stops at this many times its first block's queries (1000 -> 10000, the paper's)
# the flags no attack answers: what the user has to do instead
NO_ATTACK = {
    FlagKind.TRAIN_MODE: "no attack answers a model in train mode: call model.eval()",
    FlagKind.CLEAN_ACCURACY_AT_CHANCE: "no attack answers a model that does not know the data",
}


@dataclass
class AdaptivePlan:
    """What the adaptive step decided: the attacks added (in order) and why, the fired flags each answers and
    those it could not answer, the evidence on the gradient, the judgement, the headline's worth."""

    mode: str
    fired: list[str] = field(default_factory=list)
    attacks: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    predictions: int = 1
    headline: str = UPPER_BOUND
    bpda_modules: list[str] = field(default_factory=list)
    straight_through: str | None = None  # the module whose input takes the identity gradient of the model's input
    answers: dict[str, list[str]] = field(default_factory=dict)  # fired flag -> the attacks added for it
    unanswered: dict[str, str] = field(default_factory=dict)  # fired flag or need -> why no attack answers it
    behaviour: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, entries: Sequence[Any] | None = None) -> dict[str, Any]:
        """The report's ``adaptive`` block; with the eps ``entries`` evaluated, which attack set the headline."""
        out = {
            "mode": self.mode, "fired": self.fired, "added": self.reasons, "predictions": self.predictions,
            "bpda_modules": self.bpda_modules, "straight_through": self.straight_through, "answers": self.answers,
            "unanswered": self.unanswered, "gradient_behaviour": self.behaviour, "headline": self.headline,
        }  # fmt: skip
        setter = headline_setter(max(entries, key=lambda e: e.eps), self.reasons) if entries else None
        if setter is not None:
            out["headline_set_by"] = setter
            out["headline"] = f"{self.headline}; {setter['text']}"
        return out


def headline_setter(entry: Any, reasons: dict[str, str]) -> dict[str, Any] | None:
    """The attack that set ``entry``'s robust accuracy: the last in the chain to break a sample the ones before it
    left robust, with why it was run (an added attack's reason, or "asked for (--attacks, or the default protocol)")."""
    broke = [(name, stats.broken) for name, stats in entry.attacks.items() if stats.broken > 0]
    if not broke:
        return None
    name, broken = broke[-1]
    why = reasons.get(name, "asked for (--attacks, or the default protocol)")
    return {
        "attack": name, "broken": broken, "eps": entry.eps, "reason": why,
        "text": f"the headline was set by {name} (the last attack to break a sample: {broken} more at eps "
        f"{entry.eps:.4g}; {'added because ' + why if name in reasons else why})",
    }  # fmt: skip


def growing_square(queries: int, seed: int) -> tuple[str, Square]:
    """The black-box answer: native Square, its schedule rescaled to each block, the budget growing from
    ``queries`` until a block breaks nothing (at most ``GROWTH`` times ``queries``)."""
    spec = f"square(n_queries={queries},max_queries={GROWTH * queries})"
    return spec, Square(n_queries=queries, max_queries=GROWTH * queries, seed=seed)


def _gradient_flows(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> bool:
    """Whether the input gradient is no longer zero or NaN on most samples (``model`` with BPDA in place)."""
    after = gradient_behaviour(model, x, y, threat, pokes=0)
    return after.zero_fraction + after.nonfinite_fraction < 0.5


def _gradient_answer(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, steps: int, seed: int, plan: AdaptivePlan
) -> tuple[str, Any] | None:
    """BPDA-PGD where the gradient vanishes: on the modules that cut it, else on the whole input pipeline; None
    (with the reason in ``plan.unanswered``) when neither gives a gradient back."""
    cutting = masking_modules(model, x)
    if cutting:
        with bpda(model, cutting):
            if _gradient_flows(model, x, y, threat):
                plan.bpda_modules = cutting
                return (f"bpda-pgd(steps={steps})[{','.join(cutting)}]",
                        BPDAAttack(PGD(steps=steps, seed=seed), cutting))  # fmt: skip
    stage = input_stage(model, x)
    if stage is not None:
        with straight_through(model, stage):
            if _gradient_flows(model, x, y, threat):
                plan.straight_through = stage
                return f"bpda-pgd(steps={steps})[input<{stage}]", BPDAAttack(PGD(steps=steps, seed=seed), before=stage)
    modules = f"BPDA on {', '.join(cutting)} leaves it zero" if cutting else "no module cuts it by itself"
    pipeline = f"up to {stage}" if stage else "no layer with weights sees the input"
    plan.unanswered["bpda"] = (
        f"BPDA could NOT be run: the gradient stays zero ({modules}; the identity backward over the input pipeline, "
        f"{pipeline}, does not bring it back)"
    )
    return None


def plan_adaptive(
    model: nn.Module, x: Tensor, y: Tensor, flags: list[Flag] | None, config: Any, existing: list[str],
    surrogate: nn.Module | None = None,
) -> AdaptivePlan:  # fmt: skip
    """The attacks to add for the fired ``flags`` (``None``: the checks were skipped) and for gradients found
    useless on ``(x, y)`` (a few sanity samples). ``config`` is the :class:`~robustlab.eval.EvalConfig`."""
    plan = AdaptivePlan(config.adaptive, [f.name for f in flags or [] if f.fired], predictions=config.predictions)
    if flags is None:
        plan.headline = f"{UPPER_BOUND}; NOT checked for gradient masking (the sanity checks were skipped)"
        return plan
    threat = config.threat  # the largest eps
    behaviour: GradientBehaviour = gradient_behaviour(model, x, y, threat)
    plan.behaviour = behaviour.to_dict()
    kinds = {f.kind: f.name for f in flags if f.fired}
    if behaviour.useless and FlagKind.ZERO_OR_NAN_GRADIENTS not in kinds:
        plan.fired.append("useless_gradients")  # found by behaviour: a staircase response, no flag of its own
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

    def add(flag: str, name: str, attack: Any, reason: str) -> None:
        if name not in existing and name not in plan.attacks:
            plan.attacks[name], plan.reasons[name] = attack, reason
        plan.answers.setdefault(flag, []).append(name)

    blind = FlagKind.ZERO_OR_NAN_GRADIENTS in kinds or behaviour.useless
    blind_flag = kinds.get(FlagKind.ZERO_OR_NAN_GRADIENTS, "useless_gradients")
    evidence = (
        f"{100 * behaviour.zero_fraction:.0f} % zero / {100 * behaviour.nonfinite_fraction:.0f} % NaN input "
        f"gradients, output moving on {100 * behaviour.output_changes:.0f} %, "
        f"{100 * behaviour.piecewise_constant:.0f} % of small pokes changing nothing"
    )
    if blind:
        answer = _gradient_answer(model, x, y, threat, steps, seed, plan)
        if answer is not None:
            where = plan.bpda_modules if plan.straight_through is None else [f"the input pipeline up to "
                                                                              f"{plan.straight_through}"]  # fmt: skip
            add(blind_flag, *answer, f"useless gradients ({evidence}): PGD with the identity backward on "
                f"{', '.join(where)}")  # fmt: skip
        if surrogate is not None:
            add(blind_flag, "transfer-pgd", TransferAttack(PGD(steps=steps, seed=seed), surrogate, name="transfer-pgd"),
                "useless gradients: PGD crafted on the surrogate")  # fmt: skip
        else:
            plan.unanswered["transfer"] = "transfer was NOT run: no surrogate model was given (--surrogate)"
    square = growing_square(config.adaptive_queries, seed)
    growing = "a black-box attack, its budget growing until a block of queries breaks nothing"
    if blind:
        add(blind_flag, *square, f"{growing}: useless gradients")
    if FlagKind.BLACKBOX_BEATS_WHITEBOX in kinds:
        add(kinds[FlagKind.BLACKBOX_BEATS_WHITEBOX], *square, f"{growing}: black-box beat white-box")
    for kind in (FlagKind.RANDOM_FORWARD, FlagKind.EPS_ZERO_NOT_CLEAN):
        if kind in kinds:
            eot = f"pgd(steps={steps},eot_samples={config.eot_samples})"
            add(kinds[kind], eot, attack_from_spec(eot, seed=seed),
                f"random forward pass: the input gradient averaged over {config.eot_samples} passes (EOT)")  # fmt: skip
            plan.predictions = max(plan.predictions, config.eot_samples)
    for kind in (FlagKind.RISES_WITH_STEPS, FlagKind.RISES_WITH_EPS):
        if kind in kinds:
            more = f"pgd(steps={4 * steps},restarts=3)"
            add(kinds[kind], more, attack_from_spec(more, seed=seed),
                "robust accuracy rises with steps or eps: more steps, restarts")  # fmt: skip
    for kind, why in NO_ATTACK.items():
        if kind in kinds:
            plan.unanswered[kinds[kind]] = why
    plan.headline = headline_text(plan)
    return plan


def headline_text(plan: AdaptivePlan) -> str:
    """What the headline covers: each fired flag with the attacks that answered it, and plainly what was not run."""
    answered = "; ".join(f"{flag} answered by {', '.join(names)}" for flag, names in plan.answers.items())
    missing = [f for f in plan.fired if f not in plan.answers and f not in plan.unanswered]
    parts = [f"{UPPER_BOUND}; flags {', '.join(plan.fired)} fired"]
    parts += [f"the worst case covers: {answered}"] if answered else ["NO adaptive attack could be added"]
    parts += [f"{k}: {v}" for k, v in plan.unanswered.items()]
    parts += [f"NOT answered: {', '.join(missing)}"] if missing else []
    text = "; ".join(parts)
    return text + (f"; correctness judged over {plan.predictions} passes" if plan.predictions > 1 else "")


__all__ = ["GROWTH", "MODES", "UPPER_BOUND", "AdaptivePlan", "growing_square", "headline_setter", "plan_adaptive"]
