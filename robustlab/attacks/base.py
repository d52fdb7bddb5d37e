"""The one iterative gradient loop; FGSM, I-FGSM, PGD and MI-FGSM are configurations of it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks.protocol import AttackResult, check_labels, frozen_parameters, model_logits
from robustlab.criteria import Misclassified, TargetedMisclassified
from robustlab.errors import RobustlabError
from robustlab.losses import LossFn, get_loss
from robustlab.threat import ThreatModel

log = logging.getLogger(__name__)

Criterion = Callable[[Tensor, Tensor], Tensor]


def diverse_inputs(x: Tensor, prob: float, generator: torch.Generator, scale: float = 1.1) -> Tensor:
    """Input diversity (DI, Xie et al. 2019): random resize and pad, with probability ``prob`` per batch."""
    if prob <= 0 or torch.rand((), generator=generator, device=generator.device).item() >= prob:
        return x
    size = x.shape[-1]
    big = max(size + 1, int(round(size * scale)))
    new = int(torch.randint(size, big, (), generator=generator, device=generator.device).item())
    resized = F.interpolate(x, size=(new, new), mode="nearest")
    pad = big - new
    left = int(torch.randint(0, pad + 1, (), generator=generator, device=generator.device).item())
    top = int(torch.randint(0, pad + 1, (), generator=generator, device=generator.device).item())
    padded = F.pad(resized, (left, pad - left, top, pad - top))
    return F.interpolate(padded, size=(size, size), mode="nearest")


class GradientAttack:
    """Iterative signed/normalised gradient ascent on a per-sample loss, projected onto the threat model.

    Args:
        steps: gradient steps per restart.
        step_size: absolute step size; ``None`` uses ``rel_step_size * eps``.
        loss: a loss name from :mod:`robustlab.losses` or a callable ``(logits, labels) -> (N,)``.
        restarts: independent runs; per sample, the first successful run wins, else the highest loss.
        random_start: start from a random point of the eps-ball instead of ``x``.
        l2_start_radius: L2 random starts: ``"ball"`` (uniform in the ball) or ``"uniform"`` (radius eps * U);
            see :meth:`ThreatModel.random_start`.
        momentum: MI-FGSM decay ``mu`` (0 disables momentum).
        diversity_prob: probability of the input-diversity transform per step (0 disables it).
        early_stop: stop updating a sample once the criterion holds (keeps the first success).
        criterion: success criterion; default misclassified (untargeted) or top-1 = target (targeted).
        seed: seed of the attack's own ``torch.Generator``; the global RNG is never touched.
        evaluate: run the model once more at ``x_adv`` for the result's ``success``, ``loss`` and ``logits``.
            ``False`` (one restart only) skips that forward pass and leaves them ``None``: adversarial
            training's inner maximisation needs only ``x_adv``, and for single-step methods the pass costs ~10 %.
    """

    name = "gradient"
    rel_step_size: float = 0.25

    def __init__(
        self,
        steps: int = 10,
        step_size: float | None = None,
        loss: str | LossFn = "ce",
        restarts: int = 1,
        random_start: bool = False,
        l2_start_radius: str = "ball",
        momentum: float = 0.0,
        diversity_prob: float = 0.0,
        early_stop: bool = False,
        criterion: Criterion | None = None,
        seed: int = 0,
        evaluate: bool = True,
    ) -> None:
        if int(steps) != steps or steps < 1:
            raise RobustlabError(f"steps must be a whole number >= 1, got {steps!r}")
        if int(restarts) != restarts or restarts < 1:
            raise RobustlabError(f"restarts must be a whole number >= 1, got {restarts!r}")
        if step_size is not None and not step_size > 0:
            raise RobustlabError(f"step size must be > 0, got {step_size!r}")
        if not 0 <= diversity_prob <= 1:
            raise RobustlabError(f"diversity_prob must lie in [0, 1], got {diversity_prob!r}")
        self.steps = int(steps)
        self.step_size = step_size
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.loss_fn = get_loss(loss)
        self.restarts = int(restarts)
        self.random_start = random_start
        self.l2_start_radius = l2_start_radius
        self.momentum = float(momentum)
        self.diversity_prob = float(diversity_prob)
        self.early_stop = early_stop
        self.criterion = criterion
        self.seed = seed
        if not evaluate and self.restarts != 1:
            raise RobustlabError("evaluate=False needs restarts=1: restarts pick per sample by the loss at x_adv")
        self.evaluate = evaluate

    def config(self) -> dict:
        """The attack's configuration, for reports."""
        return {
            "attack": self.name,
            "steps": self.steps,
            "step_size": self.step_size,
            "loss": self.loss_name,
            "restarts": self.restarts,
            "random_start": self.random_start,
            "l2_start_radius": self.l2_start_radius,
            "momentum": self.momentum,
            "diversity_prob": self.diversity_prob,
            "early_stop": self.early_stop,
            "criterion": getattr(self.criterion, "name", None),
            "seed": self.seed,
        }

    def resolve_step_size(self, threat: ThreatModel) -> float:
        return float(self.step_size) if self.step_size is not None else self.rel_step_size * threat.eps

    def _check(self, x: Tensor, y: Tensor, threat: ThreatModel) -> None:
        """Refuse a batch whose shapes do not match or whose inputs leave the threat model's bounds."""
        if x.dim() < 2 or x.shape[0] != y.shape[0]:
            raise RobustlabError(
                f"inputs of shape {tuple(x.shape)} and labels of shape {tuple(y.shape)} do not match; "
                "give a batch x of shape (N, ...) and labels of shape (N,)"
            )
        threat.check_inputs(x)

    def _generator(self, device: torch.device) -> torch.Generator:
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed)
        return generator

    def perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> Tensor:
        """Just ``x_adv``, for adversarial training's inner maximisation: one restart, no forward pass at ``x_adv``.

        The model runs as it is, like a training step: a train-mode model's BatchNorm statistics see the
        iterates and its dropout draws from the global RNG (the PGD-AT recipe); ``__call__`` leaves it untouched.
        """
        if self.restarts != 1:
            raise RobustlabError(
                f"perturb runs one restart, not {self.restarts}: restarts pick per sample by the loss at x_adv; "
                "call the attack for its AttackResult instead"
            )
        self._check(x, y, threat)
        targeted = target is not None
        criterion = self.criterion or (TargetedMisclassified() if targeted else Misclassified())
        labels, sign = (target, -1.0) if targeted else (y, 1.0)
        step_size = self.resolve_step_size(threat)
        with frozen_parameters(model):
            return self._run(model, x.detach(), labels, threat, step_size, sign, criterion, self._generator(x.device))

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        """Attack ``model`` at ``x`` (true labels ``y``); with ``target`` the attack is targeted."""
        start = time.perf_counter()
        if not self.evaluate:
            x_adv = self.perturb(model, x, y, threat, target)
            return AttackResult(x_adv, None, None, None, {"time_s": time.perf_counter() - start})  # type: ignore[arg-type]
        self._check(x, y, threat)
        targeted = target is not None
        labels = target if targeted else y
        criterion = self.criterion or (TargetedMisclassified() if targeted else Misclassified())
        sign = -1.0 if targeted else 1.0
        step_size = self.resolve_step_size(threat)
        generator = self._generator(x.device)
        x = x.detach()

        with frozen_parameters(model):
            best: AttackResult | None = None
            for _ in range(self.restarts):
                x_adv = self._run(model, x, labels, threat, step_size, sign, criterion, generator)
                with torch.no_grad():
                    logits = model_logits(model, x_adv)
                    loss = self.loss_fn(logits, labels)
                    success = criterion(logits, labels)
                if best is None and not y.is_floating_point():
                    check_labels(y, logits.shape[1])
                run = AttackResult(x_adv, success, loss, logits)
                best = run if best is None else _pick(best, run, sign)
                if bool(best.success.all()):
                    break
        assert best is not None
        best.info = {"time_s": time.perf_counter() - start, **self.config(), "step_size": step_size}
        return best

    def _run(
        self,
        model: nn.Module,
        x: Tensor,
        labels: Tensor,
        threat: ThreatModel,
        step_size: float,
        sign: float,
        criterion: Criterion,
        generator: torch.Generator,
    ) -> Tensor:
        """One restart; returns the final iterate (or, with early stopping, the first successful one)."""
        x_adv = threat.random_start(x, generator, self.l2_start_radius) if self.random_start else x.clone()
        velocity = torch.zeros_like(x) if self.momentum else None
        active = torch.arange(x.shape[0], device=x.device)
        # With early stopping only the samples that have not yet succeeded are computed.

        def subset(t: Tensor) -> Tensor:
            return t[active] if self.early_stop else t

        for step in range(self.steps):
            xa = subset(x_adv).detach().requires_grad_(True)
            la = subset(labels)
            with torch.enable_grad():
                logits = model_logits(model, diverse_inputs(xa, self.diversity_prob, generator))
                if step == 0 and not la.is_floating_point():  # float targets: feature-space attacks
                    check_labels(la, logits.shape[1], what="targets" if sign < 0 else "labels")
                objective = self.loss_fn(logits, la).sum()
                (grad,) = torch.autograd.grad(objective if sign > 0 else -objective, xa)
            xa = xa.detach()
            if self.early_stop:
                keep = ~criterion(logits.detach(), la)
                active, xa, grad = active[keep], xa[keep], grad[keep]
                if active.numel() == 0:
                    break
            if velocity is not None:
                l1 = grad.flatten(1).abs().sum(1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
                grad = self.momentum * subset(velocity) + grad / l1
                if self.early_stop:
                    velocity[active] = grad
                else:
                    velocity = grad
            xa = threat.project(threat.step(xa, grad, step_size), subset(x))
            if self.early_stop:
                x_adv[active] = xa
            else:
                x_adv = xa
        return x_adv.detach()


def _pick(best: AttackResult, run: AttackResult, sign: float) -> AttackResult:
    """Per sample: keep a success over a failure, else the higher attack objective."""
    better = (run.success & ~best.success) | ((run.success == best.success) & (sign * run.loss > sign * best.loss))
    pick = better.view(-1, *([1] * (best.x_adv.dim() - 1)))
    return AttackResult(
        torch.where(pick, run.x_adv, best.x_adv),
        torch.where(better, run.success, best.success),
        torch.where(better, run.loss, best.loss),
        torch.where(better[:, None], run.logits, best.logits),
    )
