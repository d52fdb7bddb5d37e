"""Indicators of attack failure (Pintor et al., NeurIPS 2022), from the runs an evaluation already made plus a probe of
a few passes on the sanity samples.

Each indicator says why an attack may have failed where a stronger one would not: silent success (the attack saw an
adversarial point that the evaluation does not count), incomplete optimization (more steps still break samples),
unavailable gradients (zero or NaN input gradients while the output moves), unstable predictions (the loss jumps
under small input changes or repeated passes), transfer failure (examples that break a surrogate do not break the
model) and unconstrained attack failure (the attack fails even with the whole input box to move in).
:func:`gradient_behaviour` is also what the adaptive step reads to decide whether the gradient is any use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attacks.presets import PGD
from robustlab.attacks.protocol import frozen_parameters, model_logits, untouched
from robustlab.attacks.transfer import TransferAttack
from robustlab.eval.flags import FlagKind
from robustlab.eval.sanity import Flag
from robustlab.eval.sources import first_batch
from robustlab.losses import cross_entropy
from robustlab.threat import ThreatModel

MEANINGS = {
    "silent_success": "the attack reached an adversarial point that the evaluation's judgement does not count (a "
    "random or batch-dependent forward pass)",
    "incomplete_optimization": "more steps or restarts still break samples: the attack stopped before it converged",
    "unavailable_gradients": "input gradients are zero or NaN while the output changes: gradient attacks are blind "
    "(BPDA, the straight-through gradient or a black-box attack answer it)",
    "unstable_predictions": "the loss jumps under small input changes or repeated passes: gradients are noise "
    "(EOT answers it)",
    "transfer_failure": "examples that break the surrogate do not break the model: the transfer attack says little",
    "unconstrained_attack_failure": "the attack fails even with the whole input box to move in: it is broken here, "
    "not the model robust",
}
NOT_RUN = "not computed"
SAMPLES = 32  # the sanity samples the indicators probe: a few hundred passes in all


@dataclass
class GradientBehaviour:
    """How the input gradient and the output behave on a few samples: the evidence that gradients are useless.

    ``zero_fraction``/``nonfinite_fraction``: samples with an all-zero / a NaN or inf input gradient;
    ``output_changes``: samples whose logits move under a random perturbation of size eps; ``piecewise_constant``:
    single-pixel pokes of eps/8 that leave the logits bit-identical (rounding, filtering: a staircase)."""

    zero_fraction: float
    nonfinite_fraction: float
    output_changes: float
    piecewise_constant: float

    @property
    def useless(self) -> bool:
        """Whether gradient attacks are blind here: no gradient while the output moves, or a staircase response."""
        blind = self.zero_fraction + self.nonfinite_fraction > 0.5 and self.output_changes > 0
        return blind or self.piecewise_constant > 0.5

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "useless": self.useless}


def gradient_behaviour(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, pokes: int = 4
) -> GradientBehaviour:
    """The gradient and the response of ``model`` at ``(x, y)``: 1 backward and ``2 + pokes`` forward passes."""
    generator = torch.Generator().manual_seed(0)
    lo, hi = threat.bounds
    with frozen_parameters(model), untouched(model, x.device), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = model_logits(model, xg)
        (grad,) = torch.autograd.grad(cross_entropy(logits, y).sum(), xg, allow_unused=True)
    flat = torch.zeros_like(x).flatten(1) if grad is None else grad.flatten(1)
    with torch.no_grad(), untouched(model, x.device):
        clean = model_logits(model, x).float()
        noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device, x.dtype)
        moved = model_logits(model, threat.project(x + threat.eps * noise, x)).float()
        n, d = x.shape[0], x[0].numel()
        xs = x.repeat(pokes, *[1] * (x.dim() - 1)).flatten(1)
        where = torch.randint(0, d, (n * pokes,), generator=generator).to(x.device)
        rows = torch.arange(n * pokes, device=x.device)
        value = xs[rows, where]
        step = threat.eps / 8 * torch.where(value + threat.eps / 8 <= hi, 1.0, -1.0)  # stay inside the bounds
        xs[rows, where] = (value + step).clamp(lo, hi)
        poked = model_logits(model, xs.view(n * pokes, *x.shape[1:])).float() if pokes else clean[:0]
    staircase = (poked == clean.repeat(pokes, 1)).all(dim=1).float().mean() if pokes else torch.tensor(0.0)
    return GradientBehaviour(
        zero_fraction=float((flat == 0).all(dim=1).float().mean()),
        nonfinite_fraction=float((~torch.isfinite(flat)).any(dim=1).float().mean()),
        output_changes=float((moved != clean).any(dim=1).float().mean()),
        piecewise_constant=float(staircase),
    )


@dataclass
class Indicator:
    """One indicator of attack failure: ``fired``, what it means, the numbers behind it (``None``: not computed)."""

    name: str
    fired: bool | None
    message: str
    meaning: str = ""
    values: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.meaning = self.meaning or MEANINGS.get(self.name, "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flag(flags: Sequence[Flag] | None, kind: FlagKind) -> Flag | None:
    return next((f for f in flags or [] if f.kind is kind), None)


def silent_success(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, steps: int, seed: int) -> Indicator:
    """PGD with early stopping keeps the first iterate it judged adversarial; count the ones a new pass judges not."""
    with untouched(model, x.device):
        result = PGD(steps=steps, seed=seed, early_stop=True)(model, x, y, threat)
        with torch.no_grad():
            again = model_logits(model, result.x_adv).argmax(1) != y
    silent = result.success & ~again
    fraction = float(silent.float().sum() / result.success.float().sum().clamp_min(1))
    return Indicator(
        "silent_success", bool(silent.any()),
        f"{int(silent.sum())} of {int(result.success.sum())} adversarial points PGD-{steps} found are not adversarial "
        "when judged again", values={"silent": int(silent.sum()), "found": int(result.success.sum()),
                                     "fraction": fraction},
    )  # fmt: skip


def incomplete_optimization(flags: Sequence[Flag] | None, tolerance: float = 0.02) -> Indicator:
    """From the sanity check "more steps and restarts": robust accuracy falling by more than ``tolerance`` and, where
    the check names its sample count, by two samples or more (one sample of a few is no trend)."""
    flag = _flag(flags, FlagKind.RISES_WITH_STEPS)
    if flag is None or "robust_accuracy" not in flag.values:
        return Indicator("incomplete_optimization", None, f"{NOT_RUN}: the more-steps sanity check did not run")
    acc = flag.values["robust_accuracy"]
    base_name = min((k for k in acc if k.startswith("pgd-") and "x" not in k), key=lambda k: int(k[4:]))
    base = acc[base_name]
    gains = {k: base - v for k, v in acc.items() if k not in ("clean", base_name)}
    least = 2 / flag.values["samples"] - 1e-9 if flag.values.get("samples") else 0.0
    fired = any(g > tolerance and g >= least for g in gains.values())
    text = ", ".join(f"{k} {100 * acc[k]:.1f} %" for k in gains)
    return Indicator(
        "incomplete_optimization", fired, f"{base_name} {100 * base:.1f} % robust vs {text}",
        values={"robust_accuracy": acc, "tolerance": tolerance},
    )  # fmt: skip


def unavailable_gradients(behaviour: GradientBehaviour) -> Indicator:
    """Zero or NaN input gradients on more than 5 % of the samples while the output changes under eps."""
    broken = behaviour.zero_fraction + behaviour.nonfinite_fraction
    fired = broken > 0.05 and behaviour.output_changes > 0
    return Indicator(
        "unavailable_gradients", fired,
        f"{100 * behaviour.zero_fraction:.0f} % zero and {100 * behaviour.nonfinite_fraction:.0f} % NaN/inf input "
        f"gradients; the output moves under eps on {100 * behaviour.output_changes:.0f} % of the samples",
        values=behaviour.to_dict(),
    )  # fmt: skip


def unstable_predictions(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, draws: int = 4, threshold: float = 0.25
) -> Indicator:
    """Pintor et al.'s measure: the mean relative change of the loss under random perturbations of size eps/10
    (clipped at 1), with the repeated pass of the same input as the reference of a random model."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad(), untouched(model, x.device):
        reference = cross_entropy(model_logits(model, x).float(), y)
        changes = []
        for _ in range(draws):
            noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device, x.dtype)
            loss = cross_entropy(model_logits(model, threat.project(x + threat.eps / 10 * noise, x)).float(), y)
            changes.append((loss - reference).abs() / (reference.abs() + 1e-3))
    value = float(torch.stack(changes).mean().clamp(max=1))
    return Indicator(
        "unstable_predictions", value > threshold,
        f"the loss changes by {100 * value:.1f} % on average under perturbations of eps/10 (threshold "
        f"{100 * threshold:.0f} %)", values={"relative_loss_change": value, "threshold": threshold},
    )  # fmt: skip


def transfer_failure(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, surrogate: nn.Module | None, steps: int, seed: int,
    threshold: float = 0.5,
) -> Indicator:  # fmt: skip
    """Of the examples PGD crafts on ``surrogate`` that break it, the fraction that do not break ``model``."""
    if surrogate is None:
        return Indicator("transfer_failure", None, f"{NOT_RUN}: no surrogate model was given (--surrogate)")
    result = TransferAttack(PGD(steps=steps, seed=seed), surrogate)(model, x, y, threat)
    on_surrogate = result.info["surrogate_success"].to(result.success.device)
    failed = on_surrogate & ~result.success
    fraction = float(failed.float().sum() / on_surrogate.float().sum().clamp_min(1))
    return Indicator(
        "transfer_failure", bool(on_surrogate.any()) and fraction > threshold,
        f"{int(failed.sum())} of the {int(on_surrogate.sum())} examples that break the surrogate do not break the "
        "model", values={"failed": int(failed.sum()), "surrogate_broken": int(on_surrogate.sum()),
                         "fraction": fraction, "threshold": threshold},
    )  # fmt: skip


def unconstrained_attack_failure(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, steps: int, seed: int, threshold: float = 0.05
) -> Indicator:
    """PGD from ``x`` (no random start: a random point of the whole box breaks anything) with eps the whole box:
    the clean-correct samples it leaves robust."""
    lo, hi = threat.bounds
    box = ThreatModel(threat.norm, hi - lo if threat.norm == "linf" else (hi - lo) * x[0].numel() ** 0.5, threat.bounds)
    with torch.no_grad(), untouched(model, x.device):
        correct = model_logits(model, x).argmax(1) == y
    result = PGD(steps=steps, seed=seed, random_start=False, early_stop=True)(model, x, y, box)
    left = correct & ~result.success
    fraction = float(left.float().sum() / correct.float().sum().clamp_min(1))
    return Indicator(
        "unconstrained_attack_failure", fraction > threshold,
        f"PGD-{steps} with eps {box.eps:.3g} (the whole box) leaves {int(left.sum())} of {int(correct.sum())} "
        "correct samples robust", values={"robust": int(left.sum()), "correct": int(correct.sum()),
                                          "fraction": fraction, "eps": box.eps},
    )  # fmt: skip


def compute_indicators(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, flags: Sequence[Flag] | None = None,
    behaviour: GradientBehaviour | None = None, surrogate: nn.Module | None = None, steps: int = 10, seed: int = 0,
) -> list[Indicator]:  # fmt: skip
    """All six indicators on ``(x, y)`` (the sanity samples: keep them few), reusing the sanity ``flags`` and the
    adaptive step's ``behaviour`` where given."""
    behaviour = behaviour or gradient_behaviour(model, x, y, threat)
    return [
        silent_success(model, x, y, threat, steps, seed),
        incomplete_optimization(flags),
        unavailable_gradients(behaviour),
        unstable_predictions(model, x, y, threat),
        transfer_failure(model, x, y, threat, surrogate, steps, seed),
        unconstrained_attack_failure(model, x, y, threat, steps, seed),
    ]


def evaluation_indicators(
    model: nn.Module, data: Any, config: Any, threat: ThreatModel, flags: Sequence[Flag] | None,
    surrogate: nn.Module | None, device: torch.device | str,
) -> list[dict[str, Any]]:  # fmt: skip
    """The indicators of an evaluation, on its first ``min(SAMPLES, sanity_n)`` samples at ``threat`` (the largest
    eps), reusing its sanity ``flags``; as report dicts."""
    x, y = first_batch(data, min(SAMPLES, config.sanity_n))
    indicators = compute_indicators(model, x.to(device), y.to(device), threat, flags, None, surrogate,
                                    steps=config.steps or 10, seed=config.seed)  # fmt: skip
    return [i.to_dict() for i in indicators]


def indicator_lines(indicators: Sequence[dict[str, Any]] | None) -> list[str]:
    """``## Indicators of attack failure``: each one fired, passed or not computed, its numbers and what it means
    (markdown lines; none when they were not computed)."""
    if not indicators:
        return []
    state = {True: "**FIRED**", False: "ok", None: "n/a"}
    lines = ["## Indicators of attack failure", "", "Pintor et al. (NeurIPS 2022), on the sanity samples; in italics "
             "what a fired indicator means.", ""]  # fmt: skip
    lines += [f"- {state[i['fired']]} `{i['name']}`: {i['message']}. *{i['meaning']}*" for i in indicators]
    return [*lines, ""]


__all__ = [
    "MEANINGS",
    "SAMPLES",
    "GradientBehaviour",
    "Indicator",
    "compute_indicators",
    "evaluation_indicators",
    "gradient_behaviour",
    "indicator_lines",
    "incomplete_optimization",
    "silent_success",
    "transfer_failure",
    "unavailable_gradients",
    "unconstrained_attack_failure",
    "unstable_predictions",
]
