"""Fast Minimum-Norm attack (FMN, Pintor et al. NeurIPS 2021), Linf and L2: each sample's smallest perturbation found.

FMN takes normalised gradient steps on the logit margin inside a ball whose radius adapts per sample: it shrinks by
``(1 - gamma)`` while the iterate is adversarial, grows by ``(1 + gamma)`` once an adversarial point has been seen,
and before that jumps to the linearised boundary ``||delta|| + |margin| / ||grad||_dual``. Step size ``alpha`` and
``gamma`` follow cosine annealing. One run gives each sample's minimal norm (``result.norms``, inf where none was
found), so robust accuracy at every eps (:func:`robust_accuracy_curve`); called at a threat model's eps it is an
ordinary attack of the protocol.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from robustlab.attacks import options
from robustlab.attacks.loop import Call, InputGradient, Rows, gradient_loop
from robustlab.attacks.protocol import AttackBase, AttackResult, check_batch, frozen_parameters, model_logits, untouched
from robustlab.attacks.runtime import Runtime
from robustlab.criteria import Criterion, check_criterion
from robustlab.losses import cw_margin
from robustlab.threat import ThreatModel

DUAL = {"linf": 1.0, "l2": 2.0}  # the dual norm of the threat's norm, for the distance to the linearised boundary
ALPHA_INIT = {"linf": 10.0, "l2": 1.0}  # Linf: 10 (median minimal norm 0.176 vs 0.251 with adv-lib's 1 on
# zoo:fmnist-cnn-pgdat, 200 images, 100 steps); L2: 1, adv-lib's default


@dataclass
class MinimumNormResult(AttackResult):
    """An :class:`AttackResult` with each sample's smallest adversarial perturbation norm (inf: none found)."""

    norms: Tensor = field(default_factory=lambda: torch.empty(0))


def robust_accuracy_curve(norms: Tensor, clean_correct: Tensor, eps_values: Sequence[float]) -> list[float]:
    """Robust accuracy at each eps from minimal norms: correct and no adversarial example of norm <= eps found."""
    norms, correct = norms.flatten().cpu(), clean_correct.flatten().cpu().bool()
    n = max(correct.numel(), 1)
    return [float((correct & ~(norms <= eps)).sum()) / n for eps in eps_values]


class FMN(AttackBase):
    """Fast Minimum-Norm attack: the smallest Linf or L2 perturbation that meets the criterion, per sample.

    Args:
        steps: gradient steps (AutoAttack-like budget: 100).
        alpha_init: the first step size (of L2-normalised gradients); ``None``: 10 for Linf, 1 for L2.
        alpha_final: the last step size after cosine annealing; ``None``: ``alpha_init / 100``.
        gamma_init, gamma_final: the radius' relative change, annealed from the first to the second.
        criterion: success criterion; default misclassified (untargeted) or top-1 = target (targeted).

    Called with a threat model it reports success at the threat's eps: the smallest adversarial iterate where its
    norm is <= eps, else that iterate projected onto the eps-ball, judged by the model. ``result.norms`` holds
    each sample's minimal norm (inf where no iterate was adversarial), whatever the eps.
    """

    name = "fmn"
    per_sample = True  # no random draws: a sample's search does not depend on its batch

    def __init__(
        self,
        steps: int = 100,
        alpha_init: float | None = None,
        alpha_final: float | None = None,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
        criterion: Criterion | None = None,
    ) -> None:
        self.steps = options.whole("steps", steps)
        self.alpha_init = None if alpha_init is None else options.number("alpha_init", alpha_init, positive=True)
        self.alpha_final = None if alpha_final is None else options.number("alpha_final", alpha_final, positive=True)
        self.gamma_init = options.number("gamma_init", gamma_init, low=0, high=1)
        self.gamma_final = options.number("gamma_final", gamma_final, low=0, high=1)
        if criterion is not None:
            check_criterion(criterion)
        self.criterion = criterion

    def config(self) -> dict:
        """The attack's configuration, for reports."""
        return {
            "attack": self.name,
            "steps": self.steps,
            "alpha_init": self.alpha_init,
            "alpha_final": self.alpha_final,
            "gamma_init": self.gamma_init,
            "gamma_final": self.gamma_final,
            "criterion": getattr(self.criterion, "name", None),
        }

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> MinimumNormResult:
        """Search each sample's minimal norm in ``threat``'s norm; success and ``x_adv`` at ``threat``'s eps."""
        start = time.perf_counter()
        criterion = check_batch(x, y, target, threat, self.criterion)
        x = x.detach()
        with frozen_parameters(model), untouched(model, x.device):
            best, norms, logits = self._search(model, x, y, target, threat, criterion)
            inside = norms <= threat.eps
            x_adv = torch.where(_rows(inside, x), best, threat.project(best, x))
            rest = (~inside).nonzero().squeeze(1)
            if rest.numel():  # a larger adversarial perturbation, cut back to the ball, may still break the sample
                with torch.no_grad():
                    logits[rest] = model_logits(model, x_adv[rest]).float()
        success = criterion(logits, y, target)
        loss = cw_margin(logits, y if target is None else target)
        info = {"time_s": time.perf_counter() - start, **self.config(), "alpha_init": self._alpha(threat)}
        return MinimumNormResult(x_adv, success, loss, logits, info, norms=norms)

    def _alpha(self, threat: ThreatModel) -> float:
        return self.alpha_init if self.alpha_init is not None else ALPHA_INIT[threat.norm]

    def _search(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, threat: ThreatModel, criterion: Criterion
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The paper's loop, the shared gradient loop with FMN's step rule: ``(best_adv, norms, logits at best_adv)``;
        ``best_adv`` is ``x`` where nothing broke."""
        call = Call(model, threat, criterion, self._alpha(threat), Runtime(), torch.Generator(device=x.device))
        rows, step = Rows(x, y, target), FMNStep(self, call)
        best_adv = gradient_loop(x.clone(), rows, InputGradient(call, _margin), step)
        return best_adv, rows.state["best_norm"], rows.state["best_logits"]


def _margin(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """The CW margin of the true class (of the target: the loop's objective is then minus it); > 0: adversarial."""
    return cw_margin(logits, y if target is None else target)


class FMNStep:
    """FMN's step rule: a normalised gradient step of size ``alpha``, then onto the ball of each sample's radius,
    which shrinks while the iterate is adversarial, grows once one was found, and before that jumps to the linearised
    boundary; ``alpha`` and ``gamma`` cosine-annealed. Per-row state in ``rows.state``; ``final``: the smallest
    adversarial iterate found (``x`` where none)."""

    def __init__(self, attack: FMN, call: Call) -> None:
        self.threat, self.criterion, self.iterations = call.threat, call.criterion, attack.steps
        self.alpha_init = call.step_size
        self.alpha_final = attack.alpha_final if attack.alpha_final is not None else self.alpha_init / 100
        self.gamma_init, self.gamma_final = attack.gamma_init, attack.gamma_final

    def __call__(self, xa: Tensor, grad: Tensor, logits: Tensor, rows: Rows, i: int) -> Tensor:
        threat, x, s = self.threat, rows.x, rows.state
        cosine = (1 + math.cos(math.pi * i / self.iterations)) / 2
        alpha = self.alpha_final + (self.alpha_init - self.alpha_final) * cosine
        gamma = self.gamma_final + (self.gamma_init - self.gamma_final) * cosine
        logits = logits.detach().float()
        if i == 0:
            lo, hi = threat.bounds
            worst = threat.distance(torch.maximum(x - lo, hi - x), torch.zeros_like(x))  # the farthest point in bounds
            s.update(worst=worst, radius=torch.full_like(worst, math.inf), best_norm=torch.full_like(worst, math.inf),
                     best_adv=x.clone(), found=torch.zeros_like(worst, dtype=torch.bool), best_logits=logits.clone())
        norm = threat.distance(xa, x)
        adv = self.criterion(logits, rows.y, rows.target)
        better = adv & (norm < s["best_norm"])
        s["best_norm"] = torch.where(better, norm, s["best_norm"])
        s["best_adv"][better] = xa[better]
        s["best_logits"] = torch.where(better[:, None], logits, s["best_logits"])
        s["found"] |= adv
        dual = grad.flatten(1).norm(p=DUAL[threat.norm], dim=1).clamp_min(1e-12)
        to_boundary = _margin(logits, rows.y, rows.target).abs() / dual
        # before any success: the linearised boundary, measured from the radius, not only the norm (clipping at
        # the bounds keeps the norm below the radius, and norm + distance can then stall short of the boundary)
        radius = s["radius"]
        grown = torch.where(
            s["found"], radius * (1 + gamma), torch.maximum(radius.nan_to_num(posinf=0), norm) + to_boundary
        )
        radius = torch.minimum(torch.where(adv, torch.minimum(radius * (1 - gamma), s["best_norm"]), grown), s["worst"])
        s["radius"] = radius
        step = grad / _rows(grad.flatten(1).norm(dim=1).clamp_min(1e-12), x)
        delta = xa + alpha * step - x
        if threat.norm == "l2":  # onto the sphere of the radius, as the reference code does: shrinking the
            delta = delta * _rows(radius / delta.flatten(1).norm(dim=1).clamp_min(1e-12), x)  # radius shrinks delta
        return threat.project(x + delta, x, radius=radius)

    def final(self, x_adv: Tensor, rows: Rows) -> Tensor:
        """The smallest adversarial iterate (``x`` where none was found)."""
        return rows.state["best_adv"]


def _rows(t: Tensor, like: Tensor) -> Tensor:
    """A per-sample (N,) tensor shaped to broadcast against ``like``."""
    return t.view(-1, *([1] * (like.dim() - 1)))


__all__ = ["FMN", "MinimumNormResult", "robust_accuracy_curve"]
