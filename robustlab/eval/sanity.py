"""Sanity checks that flag gradient masking and other ways an evaluation can overstate robustness.

Each check returns a :class:`Flag`; ``fired`` means "look here before trusting the number". They follow the
usual checklist (Carlini et al. 2019, "On Evaluating Adversarial Robustness"; Athalye et al. 2018): robust
accuracy must not rise with more steps, restarts or a larger eps, a black-box attack must not beat the
white-box one, input gradients must be informative, eps = 0 must give clean accuracy, and the model must be
deterministic and in eval mode. All checks run on a small subset; every attack goes through the Evaluator.

:func:`run_sanity_checks` keeps them proportional to the evaluation (:mod:`robustlab.eval.sanity_budget`): one
PGD run serves every check that compares against PGD at eps, the black-box attack runs only on what that PGD left
robust, and with a budget the expensive checks take as many of the samples as the budget allows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attacks.presets import PGD
from robustlab.attacks.protocol import frozen_parameters, model_logits
from robustlab.attacks.square import Square
from robustlab.eval.evaluator import Evaluator, as_found
from robustlab.eval.flags import FlagKind, kind_of
from robustlab.eval.progress import check_progress
from robustlab.eval.sanity_budget import SanityBudget
from robustlab.losses import cross_entropy
from robustlab.models.counting import counted_model
from robustlab.threat import ThreatModel

log = logging.getLogger(__name__)


@dataclass
class Flag:
    """The outcome of one check: ``fired`` when the check found a warning sign; ``values`` back it up; the passes
    are what the check cost (images forward, input gradients backward; 0 in older reports)."""

    name: str
    fired: bool
    message: str
    values: dict[str, Any] = field(default_factory=dict)
    forward_passes: int = 0
    backward_passes: int = 0

    @property
    def kind(self) -> FlagKind | None:
        """The flag's declared kind (None for a name this version does not know, e.g. from a newer report)."""
        return kind_of(self.name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def robust_rows(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, attack: Any) -> tuple[Tensor, Tensor]:
    """Per sample: robust (classified correctly, not broken by ``attack`` run alone on every sample) and correct."""
    result = Evaluator({"attack": attack}, threat, batch_size=len(y), only_robust=False).run(model, (x, y))
    return result.clean_correct & ~result.broken["attack"], result.clean_correct


def _pgd_at_eps(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, steps: int, seed: int,
                base: Tensor | None) -> Tensor:  # fmt: skip
    """The robust rows under PGD-``steps`` at the threat's eps: ``base`` when the caller ran it already."""
    if base is not None and len(base) == len(y):
        return base.to(y.device)
    return robust_rows(model, x, y, threat, PGD(steps=steps, seed=seed, early_stop=True))[0]


def _robust(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, attacks: dict) -> dict[str, float]:
    """Each attack's own robust accuracy on every sample (``only_robust=False``), plus ``clean``."""
    result = Evaluator(attacks, threat, batch_size=len(y), only_robust=False).run(model, (x, y))
    out = {"clean": result.clean_accuracy}
    for name, success in result.broken.items():
        out[name] = (result.clean_correct & ~success).float().mean().item()
    return out


def check_train_mode(model: nn.Module) -> Flag:
    """Fires if the model or any submodule is in train mode (dropout on, batch-norm using batch statistics)."""
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    return Flag(
        "train_mode",
        bool(training),
        f"{len(training)} module(s) in train mode, e.g. {training[:3]}; call model.eval()" if training else "eval mode",
        {"modules_in_train_mode": training[:10]},
    )


def check_randomness(model: nn.Module, x: Tensor, rtol: float = 1e-5) -> Flag:
    """Fires if two forward passes on the same inputs disagree (a randomised model needs EOT attacks)."""
    with torch.no_grad():
        a, b = model_logits(model, x), model_logits(model, x)
    diff = (a - b).abs().max().item()
    scale = a.abs().max().item() + 1e-12
    fired = not diff <= rtol * scale
    message = f"two forward passes differ by up to {diff:.3g}" if fired else "deterministic forward pass"
    return Flag("random_forward", fired, message, {"max_abs_difference": diff})


def check_gradients(model: nn.Module, x: Tensor, y: Tensor, max_fraction: float = 0.05) -> Flag:
    """Fires if more than ``max_fraction`` of the samples have an all-zero or non-finite input gradient."""
    with frozen_parameters(model), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(cross_entropy(model_logits(model, xg), y).sum(), xg)
    flat = grad.flatten(1)
    zero = (flat == 0).all(dim=1).float().mean().item()
    nonfinite = (~torch.isfinite(flat)).any(dim=1).float().mean().item()
    fired = zero + nonfinite > max_fraction
    message = f"{100 * zero:.1f} % of the samples have a zero input gradient, {100 * nonfinite:.1f} % NaN/inf"
    return Flag("zero_or_nan_gradients", fired, message, {"zero_fraction": zero, "nonfinite_fraction": nonfinite})


def check_eps_zero(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, steps: int = 5) -> Flag:
    """Fires if an attack at eps = 0 changes accuracy (it can only do so through randomness or a bug)."""
    acc = _robust(model, x, y, threat.with_eps(0), {"pgd": PGD(steps=steps, early_stop=True)})
    fired = acc["pgd"] != acc["clean"]
    message = f"at eps = 0: robust {100 * acc['pgd']:.2f} % vs clean {100 * acc['clean']:.2f} %"
    return Flag("eps_zero_not_clean", fired, message, {"robust_accuracy_eps0": acc["pgd"], "clean": acc["clean"]})


def check_more_steps(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    steps: int = 10,
    factor: int = 4,
    restarts: int = 3,
    tolerance: float = 0.02,
    seed: int = 0,
    base: Tensor | None = None,
) -> Flag:
    """Fires if PGD with ``factor`` x more steps, or with ``restarts`` restarts, leaves more samples robust
    (``base``: the robust rows of PGD-``steps``, when already run)."""
    attacks = {
        f"pgd-{steps * factor}": PGD(steps=steps * factor, seed=seed, early_stop=True),
        f"pgd-{steps}x{restarts}": PGD(steps=steps, restarts=restarts, seed=seed, early_stop=True),
    }
    rows = {f"pgd-{steps}": _pgd_at_eps(model, x, y, threat, steps, seed, base)}
    for name, attack in attacks.items():  # one at a time: stateful defences see the attacks in this order
        rows[name], correct = robust_rows(model, x, y, threat, attack)
    acc = {"clean": correct.float().mean().item(), **{name: r.float().mean().item() for name, r in rows.items()}}
    base = acc[f"pgd-{steps}"]
    worse = {k: v for k, v in acc.items() if k not in ("clean", f"pgd-{steps}") and v > base + tolerance}
    message = (
        f"more steps/restarts raised robust accuracy: {', '.join(f'{k} {100 * v:.1f} %' for k, v in worse.items())} "
        f"vs pgd-{steps} {100 * base:.1f} %"
        if worse
        else f"robust accuracy does not rise with steps or restarts (pgd-{steps} {100 * base:.1f} %)"
    )
    return Flag("rises_with_steps", bool(worse), message, {"robust_accuracy": acc, "tolerance": tolerance})


def check_eps_monotone(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    eps_list: Sequence[float] | None = None,
    steps: int = 10,
    tolerance: float = 0.02,
    seed: int = 0,
    base: Tensor | None = None,
) -> Flag:
    """Fires if PGD's robust accuracy rises with eps (default eps list: eps/2, eps, 2 eps; ``base``: the robust
    rows of PGD at eps, when already run)."""
    if eps_list is None:  # Linf: 2 eps no wider than the bounds (a larger eps is refused)
        top = min(2 * threat.eps, threat.bounds[1] - threat.bounds[0]) if threat.norm == "linf" else 2 * threat.eps
        eps_list = [threat.eps / 2, threat.eps, top]
    eps_list = sorted(set(eps_list))
    acc = [
        _pgd_at_eps(model, x, y, threat.with_eps(e), steps, seed, base if e == threat.eps else None).float().mean()
        for e in eps_list
    ]
    return eps_curve_flag(eps_list, [a.item() for a in acc], tolerance)


def eps_curve_flag(eps_list: Sequence[float], robust_accuracy: Sequence[float], tolerance: float = 0.02) -> Flag:
    """Fires if robust accuracy at a larger eps exceeds the one at a smaller eps by more than ``tolerance``."""
    pairs = sorted(zip(eps_list, robust_accuracy))
    rises = [(a[0], b[0]) for i, a in enumerate(pairs) for b in pairs[i + 1 :] if b[1] > a[1] + tolerance]
    curve = ", ".join(f"eps {e:.4g}: {100 * r:.1f} %" for e, r in pairs)
    message = f"robust accuracy rises with eps ({curve})" if rises else f"robust accuracy falls with eps ({curve})"
    return Flag(
        "rises_with_eps",
        bool(rises),
        message,
        {"eps": [e for e, _ in pairs], "robust_accuracy": [r for _, r in pairs], "tolerance": tolerance},
    )


def check_blackbox(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    steps: int = 10,
    queries: int = 300,
    tolerance: float = 0.02,
    seed: int = 0,
    base: Tensor | None = None,
) -> Flag:
    """Fires if a black-box attack (Square, ``queries`` queries) breaks more than ``tolerance`` of the samples on
    the ones white-box PGD left robust (``base``: PGD's robust rows, when already run); it runs only on those, so
    ``robust_accuracy["square"]`` is what is robust to both."""
    pgd = _pgd_at_eps(model, x, y, threat, steps, seed, base)
    rows = pgd.nonzero().squeeze(1)
    broken = 0
    if rows.numel():
        broken = int((~robust_rows(model, x[rows], y[rows], threat, Square(n_queries=queries, seed=seed))[0]).sum())
    acc = {"pgd": pgd.float().mean().item(), "square": (int(pgd.sum()) - broken) / len(y)}
    fired = acc["square"] < acc["pgd"] - tolerance
    message = (f"black-box Square breaks {broken} of the {rows.numel()} samples white-box PGD left robust: "
               f"{100 * acc['square']:.1f} % robust to both vs PGD {100 * acc['pgd']:.1f} %")  # fmt: skip
    values = {"robust_accuracy": acc, "tolerance": tolerance, "square_attacked": rows.numel(), "square_broke": broken}
    return Flag("blackbox_beats_whitebox", fired, message, values)


def run_sanity_checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    steps: int = 10,
    queries: int = 300,
    tolerance: float = 0.02,
    seed: int = 0,
    progress: bool = False,
    budget: SanityBudget | None = None,
) -> list[Flag]:
    """All checks on ``(x, y)`` (keep it small: about a hundred samples), cheapest first, each with its passes;
    ``progress`` shows a bar (stderr) naming the check at work. One PGD-``steps`` run at eps serves every check
    that compares against it (its passes are the steps check's); with ``budget`` the checks after it take the first
    samples the budget allows (``values["samples"]``)."""
    flags: list[Flag] = []
    bar = check_progress(progress, 8)

    def run(name: str, check: Callable[[nn.Module], Any]) -> Any:
        # BatchNorm statistics kept; passes counted; the bar names the check and moves with its passes
        with as_found(model, x.device), counted_model(model) as (counted, passes), bar.check(name, model):
            out = check(counted)
        if isinstance(out, Flag):
            out.forward_passes, out.backward_passes = passes.forward, passes.backward
            flags.append(out)
        return out, passes

    try:
        run("train mode", check_train_mode)
        run("randomness", lambda m: check_randomness(m, x))
        run("gradients", lambda m: check_gradients(m, x, y))
        k = pilot = len(y) if budget is None else min(len(y), budget.pilot)
        base, shared = run(f"PGD-{steps}", lambda m: _pgd_at_eps(m, x[:pilot], y[:pilot], threat, steps, seed, None))
        if budget is not None:  # how many samples the budget allows, from what PGD did on the pilot samples
            spent = sum(f.forward_passes + f.backward_passes for f in flags) + shared.forward + shared.backward
            k = budget.samples(len(y), pilot, int(base.sum()), shared.forward + shared.backward, steps, queries, spent)
            if k > pilot:  # per-sample keyed PGD: the rows added equal those of one run over all k
                more, extra = run(f"PGD-{steps}", lambda m: _pgd_at_eps(m, x[pilot:k], y[pilot:k], threat, steps,
                                                                         seed, None))  # fmt: skip
                base, shared = torch.cat([base, more]), shared + extra
        xs, ys, rows = x[:k], y[:k], base[:k]
        common = {"steps": steps, "tolerance": tolerance, "seed": seed, "base": rows}
        run("eps 0", lambda m: check_eps_zero(m, xs, ys, threat, steps=2))
        run("more steps and restarts", lambda m: check_more_steps(m, xs, ys, threat, **common))
        run("eps curve", lambda m: check_eps_monotone(m, xs, ys, threat, **common))
        run("black-box Square", lambda m: check_blackbox(m, xs, ys, threat, queries=queries, **common))
        for flag in flags[3:]:
            flag.values["samples"] = k
            if flag.name == "rises_with_steps":  # the shared PGD run is this check's base
                flag.forward_passes += shared.forward
                flag.backward_passes += shared.backward
    finally:
        bar.close()
    return flags


__all__ = [
    "Flag",
    "FlagKind",
    "check_blackbox",
    "check_eps_monotone",
    "check_eps_zero",
    "check_gradients",
    "check_more_steps",
    "check_randomness",
    "check_train_mode",
    "eps_curve_flag",
    "run_sanity_checks",
]
