"""The whole robustness curve from one run: a minimum-norm attack (FMN) once, robust accuracy at every eps.

FMN finds each sample's smallest adversarial perturbation, so robust accuracy at eps is the fraction of samples
classified correctly whose minimal norm exceeds eps (:func:`~robustlab.attacks.fmn.robust_accuracy_curve`), with a
95 % Clopper-Pearson interval at every eps. A minimum-norm attack can miss what a fixed-eps attack finds, so the
curve is checked at three eps against a fixed-eps attack run on the samples the curve keeps there: a sample it breaks
takes the distance of that example as its norm (the worst case wins), and the report says how many.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attacks import attack_from_spec
from robustlab.attacks.fmn import FMN, robust_accuracy_curve
from robustlab.attacks.protocol import model_logits, untouched
from robustlab.eval.intervals import clopper_pearson, format_interval
from robustlab.eval.sources import first_batch
from robustlab.io import markdown_table
from robustlab.models.counting import counted_model
from robustlab.threat import ThreatModel

CHECK_ATTACK = "apgd"
POINTS = 21


@dataclass
class RobustnessCurve:
    """Robust accuracy at every eps of ``eps`` from one minimum-norm run, its intervals, the median minimal norm of
    the correctly classified samples (None when more than half of them were never broken), and the fixed-eps checks
    (``checks``: per eps the attack, the curve's robust accuracy before and after, the samples it overturned)."""

    norm: str
    n: int
    eps: list[float]
    robust_accuracy: list[float]
    intervals: list[list[float]]
    median_norm: float | None
    attack: dict[str, Any]
    checks: list[dict[str, Any]] = field(default_factory=list)
    forward_passes: int = 0
    backward_passes: int = 0
    seconds: float = 0.0
    random_forward: bool = False  # two passes on the first batch differed: single-pass norms may overstate

    @property
    def overturned(self) -> int:
        """Samples a fixed-eps attack broke where the minimum-norm run had kept them."""
        return sum(c["overturned"] for c in self.checks)

    def note(self) -> str:
        """One line on the checks: agreement, or that the worst case took over where they disagreed; a warning for
        a random forward pass."""
        at = ", ".join(f"{c['eps']:.4g}" for c in self.checks)
        warning = ("; UNRELIABLE for this model: its forward pass is random, and each norm and verdict comes from "
                   "single passes (no EOT)") if self.random_forward else ""  # fmt: skip
        if not self.overturned:
            return f"{self.checks[0]['attack'] if self.checks else 'no'} fixed-eps attack at eps {at} broke nothing " \
                   f"the curve kept{warning}"  # fmt: skip
        where = ", ".join(f"{c['overturned']} at eps {c['eps']:.4g}" for c in self.checks if c["overturned"])
        return (f"the fixed-eps attack broke samples the minimum-norm attack kept ({where}): the curve takes the worst "
                f"case, each such sample's norm being the distance of the example that broke it{warning}")  # fmt: skip

    def at(self, eps: float) -> float:
        """Robust accuracy at the grid point ``eps``."""
        return self.robust_accuracy[self.eps.index(eps)]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "overturned": self.overturned, "note": self.note()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RobustnessCurve:
        return cls(**{k: v for k, v in d.items() if k not in ("overturned", "note")})


def check_points(eps: Sequence[float], norm: str, bounds: tuple[float, float]) -> list[float]:
    """Three eps to check the curve at: the evaluation's own when it has three or more (smallest, middle, largest),
    else half, once and one and a half times its largest (Linf: within the bounds' width)."""
    values = sorted(set(float(e) for e in eps if e > 0))
    if len(values) >= 3:
        return [values[0], values[len(values) // 2], values[-1]]
    top = max(values or [0.0])
    width = bounds[1] - bounds[0] if norm == "linf" else float("inf")
    return sorted({min(f * top, width) for f in (0.5, 1.0, 1.5)})


def eps_grid(eps: Sequence[float], checks: Sequence[float], norm: str, bounds: tuple[float, float]) -> list[float]:
    """``POINTS`` eps from 0 to twice the largest (Linf: within the bounds' width), plus ``eps`` and ``checks``."""
    top = 2 * max([*eps, *checks])
    if norm == "linf":
        top = min(top, bounds[1] - bounds[0])
    grid = {round(top * i / (POINTS - 1), 12) for i in range(POINTS)}
    return sorted(grid | {float(e) for e in eps} | {float(c) for c in checks})


def robustness_curve(
    model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: Sequence[float], bounds: tuple[float, float] = (0.0, 1.0),
    steps: int = 100, check: str = CHECK_ATTACK, batch_size: int = 256, seed: int = 0,
) -> RobustnessCurve:  # fmt: skip
    """FMN once on ``(x, y)``, robust accuracy at every eps of :func:`eps_grid`, checked at :func:`check_points`
    with the fixed-eps attack ``check`` (a spec) on the samples the curve keeps there; passes counted."""
    start = time.perf_counter()
    fmn = FMN(steps=steps)
    checks_at = check_points(eps, norm, bounds)
    norms, correct = torch.empty(0), torch.empty(0, dtype=torch.bool)
    with counted_model(model) as (counted, passes):
        parts = []
        with torch.no_grad(), untouched(counted, x.device):
            first = x[:batch_size]
            random = not torch.equal(model_logits(counted, first), model_logits(counted, first))
        for i in range(0, len(y), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            with torch.no_grad(), untouched(counted, xb.device):
                right = model_logits(counted, xb).argmax(1) == yb
            found = fmn(counted, xb, yb, ThreatModel(norm, max(checks_at), bounds)).norms.detach().cpu().double()
            parts.append((torch.where(right.cpu(), found, torch.zeros_like(found)), right.cpu()))
        norms, correct = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        checks = [_check(counted, x, y, norms, correct, ThreatModel(norm, e, bounds), check, seed, batch_size)
                  for e in checks_at]  # fmt: skip
    grid = eps_grid(eps, checks_at, norm, bounds)
    accuracy = robust_accuracy_curve(norms, correct, grid)
    n = len(y)
    kept = norms[correct]
    median = float(kept.median()) if kept.numel() else None
    return RobustnessCurve(
        norm=norm, n=n, eps=grid, robust_accuracy=accuracy,
        intervals=[list(clopper_pearson(round(a * n), n)) for a in accuracy],
        median_norm=median if median is not None and median != float("inf") else None,
        attack=fmn.config(), checks=checks, forward_passes=passes.forward, backward_passes=passes.backward,
        seconds=round(time.perf_counter() - start, 3), random_forward=random,
    )  # fmt: skip


def _check(
    model: nn.Module, x: Tensor, y: Tensor, norms: Tensor, correct: Tensor, threat: ThreatModel, spec: str, seed: int,
    batch_size: int,
) -> dict[str, Any]:  # fmt: skip
    """Run ``spec`` at ``threat``'s eps on the samples the curve keeps there; a sample it breaks gets the distance
    of its example as its norm (in place), so the curve takes the worst case."""
    before = robust_accuracy_curve(norms, correct, [threat.eps])[0]
    kept = (correct & ~(norms <= threat.eps)).nonzero().squeeze(1)
    attack = attack_from_spec(spec, seed=seed)
    overturned = 0
    for i in range(0, kept.numel(), batch_size):
        rows = kept[i : i + batch_size]
        xb, yb = x[rows.to(x.device)], y[rows.to(y.device)]
        result = attack(model, xb, yb, threat)
        broke = result.success.cpu()
        distance = threat.distance(result.x_adv, xb).detach().cpu().double().clamp(max=threat.eps)  # in the ball
        norms[rows[broke]] = torch.minimum(norms[rows[broke]], distance[broke])
        overturned += int(broke.sum())
    after = robust_accuracy_curve(norms, correct, [threat.eps])[0]
    return {"eps": threat.eps, "attack": spec, "attacked": int(kept.numel()), "overturned": overturned,
            "curve_robust_accuracy": before, "robust_accuracy": after}  # fmt: skip


def evaluation_curve(
    model: nn.Module, data: Any, config: Any, threat: ThreatModel, device: torch.device | str
) -> RobustnessCurve:
    """The curve of an evaluation (``robustlab eval --curve``): every item of ``data`` under ``threat``'s norm and
    bounds, the :class:`~robustlab.eval.EvalConfig`'s eps, batch size and seed."""
    x, y = first_batch(data, len(data[1]) if isinstance(data, tuple) else len(data))
    return robustness_curve(
        model, x.to(device), y.to(device), threat.norm, config.eps, tuple(threat.bounds), batch_size=config.batch_size,
        seed=config.seed,
    )  # fmt: skip


def curve_lines(curve: dict[str, Any] | None) -> list[str]:
    """``## Robustness curve``: robust accuracy with its interval at every eps, the median minimal norm and the
    fixed-eps checks (markdown lines; none without a curve)."""
    if not curve:
        return []
    median = curve.get("median_norm")
    lead = (f"One minimum-norm run ({curve['attack'].get('attack', 'fmn')}, {curve['attack'].get('steps')} steps, "
            f"{curve['forward_passes']} forward and {curve['backward_passes']} backward passes, {curve['seconds']} s "
            f"with the checks) on {curve['n']} samples; median minimal {curve['norm']} norm of the correctly "
            f"classified samples: {'not reached (most never broken)' if median is None else f'{median:.4g}'}. "
            f"Checked against fixed-eps attacks: {RobustnessCurve.from_dict(curve).note()}.")  # fmt: skip
    rows = [[f"{e:.4g}", format_interval(a, ci)] for e, a, ci in zip(curve["eps"], curve["robust_accuracy"],
                                                                     curve["intervals"])]  # fmt: skip
    checks = [[f"{c['eps']:.4g}", c["attack"], c["attacked"], c["overturned"],
               f"{100 * c['curve_robust_accuracy']:.1f}", f"{100 * c['robust_accuracy']:.1f}"]
              for c in curve["checks"]]  # fmt: skip
    return [
        "## Robustness curve", "", lead, "", markdown_table(["eps", "robust accuracy % [95 % interval]"], rows), "",
        markdown_table(["eps", "fixed-eps attack", "samples attacked", "broken that the curve kept",
                        "curve robust %", "worst case robust %"], checks), "",
    ]  # fmt: skip


__all__ = [
    "CHECK_ATTACK",
    "RobustnessCurve",
    "check_points",
    "curve_lines",
    "eps_grid",
    "evaluation_curve",
    "robustness_curve",
]
