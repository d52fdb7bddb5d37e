"""APGD (Croce & Hein 2020): parameter-free PGD that halves its step size at checkpoints when the loss stalls.

:class:`APGD` is the one gradient loop's attack with another step rule: it reuses :class:`GradientAttack`'s
restarts (as rows of one batch), keyed per-sample random starts, early stopping, EOT, precision and memory format,
and replaces only the step rule (:class:`APGDStep`). Steps, projections, clipping and random starts are the
:class:`~robustlab.threat.ThreatModel`'s (Linf: signed steps; L2: steps on the normalised gradient).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attacks import options
from robustlab.attacks.base import GradientAttack
from robustlab.attacks.loop import Call, Rows
from robustlab.attacks.protocol import AttackBase, AttackResult, frozen_parameters, model_logits, untouched
from robustlab.attacks.restarts import pick
from robustlab.criteria import Criterion, Misclassified, TargetedMisclassified
from robustlab.errors import RobustlabError
from robustlab.losses import LossFn
from robustlab.threat import ThreatModel

RANKINGS = ("logits", "malt")


def checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD checks its progress: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} -
    0.03, 0.06), in whole iterations as the reference code rounds them (100 steps: 22, 41, 57, 70, 80, 87, 93, 99)."""
    first, shrink, shortest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    points, length = [first], first
    while True:
        length = max(length - shrink, shortest)
        if points[-1] + length > steps:
            return points
        points.append(points[-1] + length)


class APGDStep:
    """APGD's step rule (the paper's Algorithm 1) on :func:`~robustlab.attacks.loop.gradient_loop`: a step of size
    ``eta`` then momentum against the previous iterate, ``eta`` halved at the checkpoints where the objective
    stalled (the iterate back to the best one), the best iterate kept; per-row state in ``rows.state``. It evaluates
    ``steps + 1`` iterates (the start and each step's), so the last one counts too."""

    def __init__(
        self, threat: ThreatModel, step_size: float, steps: int, momentum: float, rho: float,
        objective: Callable[[Tensor, Rows], Tensor],
    ) -> None:  # fmt: skip
        self.threat, self.step_size, self.steps, self.momentum, self.rho = threat, step_size, steps, momentum, rho
        self.objective, self.iterations = objective, steps + 1
        self.previous = dict(zip(checkpoints(steps), [0, *checkpoints(steps)]))  # checkpoint -> the one before

    def __call__(self, x: Tensor, grad: Tensor, logits: Tensor, rows: Rows, i: int) -> Tensor:
        s, objective = rows.state, self.objective(logits, rows)
        if i == 0:
            eta = torch.full((x.shape[0], *([1] * (x.dim() - 1))), self.step_size, device=x.device, dtype=grad.dtype)
            s.update(eta=eta, x_prev=x, best_x=x, best_grad=grad, best=objective, last=objective,
                     increases=torch.zeros_like(objective), best_at_check=objective,
                     reduced=torch.ones_like(objective, dtype=torch.bool))  # fmt: skip
        else:
            s["increases"] += objective > s["last"]
            s["last"] = objective
            better = objective > s["best"]
            s["best"] = torch.where(better, objective, s["best"])
            s["best_x"], s["best_grad"] = _where(better, x, s["best_x"]), _where(better, grad, s["best_grad"])
        if i in self.previous:  # halve the step and go back to the best point where the objective stalled
            stalled = ~s["reduced"] & (s["best"] <= s["best_at_check"])
            halve = (s["increases"] < self.rho * (i - self.previous[i])) | stalled
            s["eta"] = _where(halve, s["eta"] / 2, s["eta"])
            x, grad = _where(halve, s["best_x"], x), _where(halve, s["best_grad"], grad)
            s["reduced"], s["best_at_check"], s["increases"] = halve, s["best"].clone(), torch.zeros_like(objective)
        if i == self.steps:
            return x
        # z = P(x + eta * step(grad)); x_next = P(x + alpha (z - x) + (1 - alpha) (x - x_prev))
        z = self.threat.project(self.threat.step(x, grad, s["eta"]), rows.x)
        alpha = self.momentum if i > 0 else 1.0
        x_next = self.threat.project(x + alpha * (z - x) + (1 - alpha) * (x - s["x_prev"]), rows.x)
        s["x_prev"] = x
        return x_next

    def final(self, x: Tensor, rows: Rows) -> Tensor:
        """The best iterate."""
        return rows.state["best_x"]


class APGD(GradientAttack):
    """Auto-PGD (Croce & Hein 2020): step size 2 eps, halved at the checkpoints where the loss stalls, momentum 0.75,
    the best iterate kept per sample; a random start (L2: uniform in the ball, on its surface in high dimension).

    Args:
        steps: iterations per restart (AutoAttack standard: 100).
        loss: ``ce`` (APGD-CE), ``dlr`` (APGD-DLR), ``cw``, or any loss of :mod:`robustlab.losses`.
        restarts: independent runs from random starts; per sample the first success, else the highest loss.
        rho: at a checkpoint the step size is halved if fewer than this fraction of the steps since the last one
            raised the loss (or if it was not halved at the last one and the best loss did not improve since).
        momentum: weight of the new step against the previous one (the paper's alpha).
        **kwargs: :class:`GradientAttack`'s options (``step_size``: the initial step size, ``early_stop``,
            ``criterion``, ``seed``, ``eot_samples``, ``keyed_start``, ``memory_format``, ``precision``, ...).

    A sample's result is the first iterate that meets the criterion, else its highest-loss iterate; with or without
    early stopping the same (early stopping only saves the steps after success).
    """

    name = "apgd"
    rel_step_size = 2.0
    keep_first_success = True

    def __init__(
        self,
        steps: int = 100,
        loss: str | LossFn = "ce",
        restarts: int = 1,
        rho: float = 0.75,
        momentum: float = 0.75,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("random_start", True)
        kwargs.setdefault("l2_start_radius", "ball")
        super().__init__(steps=steps, loss=loss, restarts=restarts, momentum=momentum, **kwargs)
        self.rho = options.number("rho", rho, low=0, high=1)
        options.number("momentum", momentum, low=0, high=1)

    def config(self) -> dict:
        """The attack's configuration, for reports."""
        return {**super().config(), "rho": self.rho}

    def step_rule(self, call: Call) -> APGDStep:
        """APGD's step rule, its objective the attack loss (minus the loss towards a target: higher is better)."""
        return APGDStep(call.threat, call.step_size, self.steps, self.momentum, self.rho, self._objective)

    def _objective(self, logits: Tensor, rows: Rows) -> Tensor:
        loss = self._loss(logits.detach().float(), rows.y, rows.target).float()
        return -loss if rows.target is not None else loss


def _where(rows: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per row: ``a`` where ``rows`` holds, else ``b``."""
    return torch.where(rows.view(-1, *([1] * (a.dim() - 1))), a, b)


class APGDTargeted(AttackBase):
    """APGD-T (Croce & Hein 2020): APGD with the targeted DLR loss, run once per target class, the targets being the
    top classes other than the true one, each run only on the samples no earlier target broke.

    Called without targets it is an untargeted attack (success: misclassified, as in AutoAttack); called with
    ``target`` it is APGD with the targeted DLR loss towards that target.

    Args:
        steps: iterations per target (AutoAttack standard: 100).
        targets: how many target classes (AutoAttack standard: 9; at most the number of classes minus one).
        ranking: the order of the targets: ``"logits"`` (AutoAttack: the highest clean logits first) or ``"malt"``
            (Melamed et al. 2024, MALT, arXiv 2407.02240: the smallest normalised gap first,
            ``(z_y - z_t) / ||grad_x (z_y - z_t)||_*`` with the dual norm of the threat model, L1 for Linf and L2
            for L2: the distance to the class's linearised decision boundary; one backward pass per class).
        restarts: random restarts per target.
        loss: the targeted loss (default ``dlr-targeted``; ``ce`` gives CE towards the target).
        criterion: success criterion of untargeted calls (default misclassified).
        seed: seed of the attack's generators; each target's run draws its own starts.
        **kwargs: :class:`APGD`'s options (``step_size``, ``rho``, ``early_stop``, ``eot_samples``, ``precision``, ...).
    """

    name = "apgd-t"
    options_from = APGD  # its **kwargs are APGD's options (robustlab.registry.signature_options)

    def __init__(
        self,
        steps: int = 100,
        targets: int = 9,
        ranking: str = "logits",
        restarts: int = 1,
        loss: str | LossFn = "dlr-targeted",
        criterion: Criterion | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self.targets = options.whole("targets", targets)
        self.ranking = options.choice("ranking", ranking, RANKINGS)
        self.seed = options.seed(seed)
        seeds = torch.randint(0, 2**31, (self.targets,), generator=torch.Generator().manual_seed(self.seed)).tolist()
        criterion = criterion or Misclassified()
        self.runs = [APGD(steps, loss, restarts, criterion=criterion, seed=s, **kwargs) for s in seeds]
        self.targeted = APGD(steps, loss, restarts, seed=self.seed, criterion=TargetedMisclassified(), **kwargs)

    @property
    def per_sample(self) -> bool:
        """Whether a sample's result is independent of its batch (targets come from its own clean logits)."""
        return self.runs[0].per_sample

    def config(self) -> dict:
        """The attack's configuration, for reports."""
        return {**self.runs[0].config(), "attack": self.name, "seed": self.seed, "targets": self.targets,
                "ranking": self.ranking}  # fmt: skip

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        """Attack each sample towards its top targets in turn until one breaks it (or towards ``target``)."""
        start = time.perf_counter()
        if target is not None:
            return self.targeted(model, x, y, threat, target=target)
        ranked = self.rank_targets(model, x, y, threat)
        best: AttackResult | None = None
        broken: list[int] = []
        runtime: dict[str, str] = {}
        for rank, attack in enumerate(self.runs[: ranked.shape[1]]):
            rows = torch.arange(x.shape[0], device=x.device) if best is None else (~best.success).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            part = attack(model, x[rows], y[rows], threat, target=ranked[rows, rank])
            broken.append(int(part.success.sum()))
            if best is None:  # the layout and precision the runs take: the first one's, from its result
                best, runtime = part, {k: part.info[k] for k in ("memory_format", "precision")}
                continue
            candidate = AttackResult(best.x_adv.clone(), best.success.clone(), best.loss.clone(), best.logits.clone())
            candidate.x_adv[rows], candidate.success[rows] = part.x_adv, part.success
            candidate.loss[rows], candidate.logits[rows] = part.loss, part.logits
            best = pick(best, candidate, sign=-1.0)  # a success, else the lower targeted loss
        assert best is not None
        best.info = {"time_s": time.perf_counter() - start, **self.config(), "targets_tried": ranked[:, : len(broken)],
                     "broken_per_target": broken, **runtime}  # fmt: skip
        return best

    def rank_targets(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
        """The target classes per sample, best first, at most ``targets`` of them: (N, T)."""
        with frozen_parameters(model), untouched(model, x.device), torch.enable_grad():
            xg = x.detach().clone().requires_grad_(self.ranking == "malt")
            logits = model_logits(model, xg)
            classes = logits.shape[1]
            if classes < 4:
                raise RobustlabError(f"apgd-t needs at least 4 classes (the targeted DLR loss); the model has "
                                     f"{classes}: use apgd or apgd+dlr")  # fmt: skip
            count = min(self.targets, classes - 1)
            score = -logits.detach().float()  # logits ranking: the highest logit first
            if self.ranking == "malt":
                score = self._malt_scores(logits, xg, y, threat)
            score = score.scatter(1, y[:, None], float("inf"))  # never the true class
            return score.argsort(dim=1)[:, :count]

    @staticmethod
    def _malt_scores(logits: Tensor, x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
        """MALT's score per class: the logit gap to the true class over the dual norm of its input gradient."""
        gap = logits.gather(1, y[:, None]) - logits  # (N, C): z_y - z_t
        dual = 1 if threat.norm == "linf" else 2
        scores = []
        for t in range(logits.shape[1]):
            grad = torch.autograd.grad(gap[:, t].sum(), x, retain_graph=t < logits.shape[1] - 1)[0]
            scores.append(gap[:, t].detach().float() / grad.flatten(1).float().norm(p=dual, dim=1).clamp_min(1e-12))
        return torch.stack(scores, dim=1)


__all__ = ["RANKINGS", "APGD", "APGDTargeted", "checkpoints"]
