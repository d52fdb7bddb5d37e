"""The one gradient loop, PGD's pseudo-code, and the small pieces that plug into it.

::

    for i in range(iterations):
        grad, logits = gradient(x_adv)                  # the objective's input gradient (EOT, input diversity inside)
        stay = stop(x_adv, logits, rows)                # early stopping: rows that meet the criterion leave
        x_adv = step(x_adv, grad, logits, rows, i)      # a projected step (momentum: a gradient transform; APGD's rule)

PGD, I-FGSM and MI-FGSM step with :class:`ProjectedStep` (momentum: :class:`Momentum`), APGD with its
:class:`~robustlab.attacks.apgd.APGDStep`, FMN with :class:`~robustlab.attacks.fmn.FMNStep`. Restarts wrap the loop
(rows of one batch, :mod:`robustlab.attacks.restarts`); an attack builds the pieces from its options
(:class:`~robustlab.attacks.base.GradientAttack`); what a call changes lives in :class:`Rows` and :class:`Found`, never
on the attack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from robustlab.attacks.inputs import eot_rng
from robustlab.attacks.protocol import check_first_logits, model_logits
from robustlab.attacks.runtime import Runtime
from robustlab.criteria import Criterion
from robustlab.threat import LOW_PRECISION, ThreatModel


@dataclass(frozen=True)
class Call:
    """What one call of an attack fixes for its loop: the model, threat model, criterion, step size, the layout and
    precision of the passes, and the generator the call's random draws come from."""

    model: nn.Module
    threat: ThreatModel
    criterion: Criterion
    step_size: float
    runtime: Runtime
    generator: torch.Generator


class Rows:
    """The rows still attacked: their place in the batch (``index``), clean inputs, labels and targets, and the state
    the pieces keep per row (``state``: momentum's velocity, APGD's step sizes); early stopping narrows them all."""

    def __init__(self, x: Tensor, y: Tensor, target: Tensor | None = None) -> None:
        self.index = torch.arange(x.shape[0], device=x.device)
        self.x, self.y, self.target = x, y, target
        self.state: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return self.index.numel()

    def keep(self, stay: Tensor) -> None:
        """Only the rows at positions ``stay`` go on."""
        self.index, self.x, self.y = (t.index_select(0, stay) for t in (self.index, self.x, self.y))
        self.target = self.target.index_select(0, stay) if self.target is not None else None
        self.state = {name: t.index_select(0, stay) for name, t in self.state.items()}


class Gradient(Protocol):
    """The input gradient of the attack objective at ``x_adv`` and the logits there (``first``: the first iterate)."""

    def __call__(self, x_adv: Tensor, rows: Rows, first: bool) -> tuple[Tensor, Tensor]: ...


class Step(Protocol):
    """A step rule: the next iterate from the gradient at this one (``iterations``: how many gradients it takes), and
    each row's answer at the end (``final``: PGD the last iterate, APGD the best)."""

    iterations: int

    def __call__(self, x_adv: Tensor, grad: Tensor, logits: Tensor, rows: Rows, i: int) -> Tensor: ...

    def final(self, x_adv: Tensor, rows: Rows) -> Tensor: ...


GradientTransform = Callable[[Tensor, Rows], Tensor]
InputTransform = Callable[[Tensor], Tensor]
Stop = Callable[[Tensor, Tensor, Rows], "Tensor | None"]


def gradient_loop(x_adv: Tensor, rows: Rows, gradient: Gradient, step: Step, stop: Stop | None = None) -> Tensor:
    """Projected gradient ascent from ``x_adv``: at each iterate the input gradient, the stop rule, one step; the step
    rule's answer for the rows still going (``rows`` says which)."""
    for i in range(step.iterations):
        xa = x_adv.detach().requires_grad_(True)
        grad, logits = gradient(xa, rows, first=i == 0)
        xa = xa.detach()
        stay = stop(xa, logits, rows) if stop is not None else None
        if stay is not None:  # the stop rule recorded the leaving rows; the others go on
            xa, grad, logits = (t.index_select(0, stay) for t in (xa, grad, logits))
            rows.keep(stay)
            if not len(rows):
                return xa
        x_adv = step(xa, grad, logits, rows, i)
    return step.final(x_adv, rows)


class InputGradient:
    """The gradient of the attack objective (the loss, or minus the loss towards a target) w.r.t. the input, and the
    logits; an input transform (input diversity) runs before each pass, and EOT averages ``samples`` passes with
    fresh randomness. Float32 where the pass ran in low precision (no underflow in norms)."""

    def __init__(
        self, call: Call, loss: Callable[[Tensor, Tensor, Tensor | None], Tensor], samples: int = 1,
        inputs: InputTransform | None = None,
    ) -> None:  # fmt: skip
        self.call, self.loss, self.samples, self.inputs = call, loss, samples, inputs

    def __call__(self, xa: Tensor, rows: Rows, first: bool) -> tuple[Tensor, Tensor]:
        grad: Tensor | None = None
        run = self.call.runtime
        with torch.enable_grad(), eot_rng(self.samples, self.call.generator, xa.device):
            for _ in range(self.samples):
                with run.autocast(xa.device):
                    logits = model_logits(self.call.model, self.inputs(xa) if self.inputs is not None else xa)
                    if first:
                        check_first_logits(logits, rows.y, rows.target, self.call.criterion)
                    objective = self.loss(logits, rows.y, rows.target).sum()
                    scale = run.loss_scale
                    objective = objective * scale if scale != 1 else objective
                g = torch.autograd.grad(objective if rows.target is None else -objective, xa)[0]
                if self.samples > 1:
                    grad = (torch.zeros_like(xa) if grad is None else grad).add_(g / self.samples)
                else:  # one pass: its gradient as it is (0 + g / 1 is g; only the sign of a zero could differ)
                    grad = g
        assert grad is not None
        return grad.float() if grad.dtype in LOW_PRECISION else grad, logits


class ProjectedStep:
    """PGD's step: the gradient through its transforms (momentum), one step of the threat model, projected."""

    def __init__(
        self, threat: ThreatModel, step_size: float, iterations: int, transforms: tuple[GradientTransform, ...] = ()
    ) -> None:
        self.threat, self.step_size, self.iterations, self.transforms = threat, step_size, iterations, transforms

    def __call__(self, x_adv: Tensor, grad: Tensor, logits: Tensor, rows: Rows, i: int) -> Tensor:
        for transform in self.transforms:
            grad = transform(grad, rows)
        return self.threat.project(self.threat.step(x_adv, grad, self.step_size), rows.x, inplace=True)

    def final(self, x_adv: Tensor, rows: Rows) -> Tensor:
        """The last iterate."""
        return x_adv


class Momentum:
    """MI-FGSM's gradient transform (Dong et al. 2018): ``v = decay * v + g / ||g||_1``, the velocity kept per row."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def __call__(self, grad: Tensor, rows: Rows) -> Tensor:
        l1 = grad.flatten(1).abs().sum(1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
        velocity = rows.state["velocity"] if "velocity" in rows.state else torch.zeros_like(grad)
        rows.state["velocity"] = self.decay * velocity + grad / l1
        return rows.state["velocity"]


class Found:
    """The stop rule and what it found per row of the batch. With early stopping a row leaves at the first iterate
    that meets the criterion (``hit``, with float32 ``hit_logits``), or when another restart of its sample broke
    (row ``r`` holds sample ``r % samples``); ``keep_first`` without early stopping keeps a row's first success while
    it goes on (APGD). ``result`` fills in the rows that never left."""

    def __init__(
        self, x_adv: Tensor, call: Call, early: bool, samples: int | None = None, keep_first: bool = False
    ) -> None:
        self.model, self.criterion, self.runtime = call.model, call.criterion, call.runtime
        self.early, self.samples, self.keep_first = early, samples, keep_first
        self.out = x_adv.clone() if early or keep_first else x_adv  # the answers of rows that leave or succeed
        self.done = torch.zeros(x_adv.shape[0], dtype=torch.bool, device=x_adv.device)
        self.left = torch.zeros_like(self.done)
        self.hits: list[Tensor] = [torch.zeros(0, dtype=torch.long, device=x_adv.device)]
        self.hit_logits: list[Tensor] = []

    @property
    def stop(self) -> Stop | None:
        """The stop rule for :func:`gradient_loop` (``None``: nothing to watch)."""
        return self if self.early or self.keep_first else None

    def __call__(self, xa: Tensor, logits: Tensor, rows: Rows) -> Tensor | None:
        """Record the rows that meet the criterion at ``xa``; the positions of the rows that go on (``None``: all)."""
        if not self.early:
            new = self.criterion(logits, rows.y, rows.target) & ~self.done
            self.out[new] = xa[new]
            self.done |= new
            return None
        leave, hit, judged = stop_rows(self.model, self.criterion, self.runtime, xa, rows.y, rows.target, logits,
                                       rows.index, self.samples)  # fmt: skip
        if leave is None:
            return None
        gone = leave.nonzero().squeeze(1)
        self.hits.append(rows.index[hit])
        self.hit_logits.append(judged)
        self.out[rows.index[gone]] = xa.index_select(0, gone)
        self.left[rows.index[gone]] = True
        return (~leave).nonzero().squeeze(1)

    def result(self, last: Tensor, rows: Rows) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(x_adv, left, hit, hit_logits)``: ``last`` for the rows that never left or succeeded."""
        if self.stop is None:
            out = last
        else:
            out, keep = self.out, ~self.done[rows.index]
            if len(rows):
                out[rows.index[keep]] = last[keep]
        logits = torch.cat(self.hit_logits) if self.hit_logits else None
        return out.detach(), self.left, torch.cat(self.hits), logits


def stop_rows(
    model: nn.Module,
    criterion: Criterion,
    runtime: Runtime,
    xa: Tensor,
    ya: Tensor,
    ta: Tensor | None,
    logits: Tensor,
    active: Tensor,
    samples: int | None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Early stopping at one iterate: ``(leave, hit, hit_logits)`` over the active rows, ``None`` if no row leaves.

    ``hit`` rows break at this iterate; under low precision a float32 pass confirms them (a bf16 verdict alone could
    stop a sample the judge still finds robust), and ``hit_logits`` are float32 logits the result reuses. ``leave``
    adds the other rows of a sample one of whose restarts broke (row ``r`` holds sample ``r % samples``).
    """
    hit = criterion(logits.detach(), ya, ta)
    if not bool(hit.any()):
        return None, None, None
    hit_logits = logits.detach()[hit]
    if runtime.precision != "fp32":
        idx = hit.nonzero().squeeze(1)
        with torch.no_grad():
            hit_logits = model_logits(model, xa[idx])
        confirmed = criterion(hit_logits, ya[idx], ta[idx] if ta is not None else None)
        hit = torch.zeros_like(hit).index_fill_(0, idx[confirmed], True)
        hit_logits = hit_logits[confirmed]
        if not bool(confirmed.any()):
            return None, None, None
    if samples is None:  # one restart per batch: a row is a sample
        return hit, hit, hit_logits
    sample = active % samples
    broken = torch.zeros(samples, dtype=torch.bool, device=hit.device)
    broken[sample[hit]] = True
    return broken[sample], hit, hit_logits


__all__ = [
    "Call",
    "Found",
    "Gradient",
    "GradientTransform",
    "InputGradient",
    "InputTransform",
    "Momentum",
    "ProjectedStep",
    "Rows",
    "Step",
    "Stop",
    "gradient_loop",
    "stop_rows",
]
