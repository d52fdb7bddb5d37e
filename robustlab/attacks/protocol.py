"""The one attack protocol, the result every attack returns, and the checks every attack shares.

An attack is a small object configured once and called with everything that varies:
``attack(model, x, y, threat, target=None) -> AttackResult``. The evaluator, the transfer wrapper, the CLI and
the trainers see attacks only through this protocol.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from robustlab.criteria import Criterion, Misclassified, TargetedMisclassified
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel


@dataclass
class AttackResult:
    """What an attack returns; every tensor is per sample, in the order of the inputs."""

    x_adv: Tensor
    success: Tensor  # bool (N,): the criterion holds at x_adv
    loss: Tensor  # (N,): the attack loss at x_adv (for targeted attacks: the loss towards the target)
    logits: Tensor  # (N, C): the model's logits at x_adv
    info: dict = field(default_factory=dict)


@runtime_checkable
class Attack(Protocol):
    """Anything the evaluator, the transfer wrapper and the CLI can run as an attack (:class:`AttackBase` gives the
    defaults of all but ``name``, ``config`` and ``__call__``)."""

    name: str
    spec: str  # its name in reports: the spec it was built from (attack_from_spec sets it), else its name
    per_sample: bool  # a sample's result does not depend on the rest of its batch (nested eps attack only survivors)

    def config(self) -> dict:
        """The attack's configuration, for reports."""
        ...

    def resolve_step_size(self, threat: ThreatModel) -> float | None:
        """The step size a call inside ``threat`` takes (None: the attack has no fixed step), for reports."""
        ...

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        """Attack ``model`` at ``x`` (true labels ``y``) inside ``threat``; with ``target``, a targeted attack."""
        ...


class AttackBase:
    """The defaults of what :class:`Attack` declares beyond ``name``, ``config`` and ``__call__``: batch-dependent
    results, no fixed step size, reported under its name unless built from a spec."""

    name: str = "attack"
    per_sample: bool = False
    _spec: str | None = None

    @property
    def spec(self) -> str:
        """Its name in reports: the spec it was built from, else :attr:`name`."""
        return self._spec or self.name

    @spec.setter
    def spec(self, value: str) -> None:
        self._spec = value

    def resolve_step_size(self, threat: ThreatModel) -> float | None:
        """No fixed step size."""
        return None


class _Declared(AttackBase):
    """An object with ``name``, ``config`` and ``__call__`` only, given the protocol's defaults (an attack written
    before ``spec``, ``per_sample`` and ``resolve_step_size`` were declared)."""

    def __init__(self, attack: object) -> None:
        self.attack, self.name = attack, getattr(attack, "name", type(attack).__name__)

    def config(self) -> dict:
        return self.attack.config() if hasattr(self.attack, "config") else {"attack": self.name}  # type: ignore[attr-defined]

    def __call__(self, *args: object, **kwargs: object) -> AttackResult:
        return self.attack(*args, **kwargs)  # type: ignore[operator]


def as_attack(attack: object) -> Attack:
    """``attack`` itself when it speaks the whole protocol, else an :class:`AttackBase` around it."""
    return attack if isinstance(attack, Attack) else _Declared(attack)


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Switch off ``requires_grad`` on the parameters (no weight gradients), restore it afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def untouched(model: nn.Module, device: torch.device | str) -> Iterator[None]:
    """Give ``model`` back exactly as found: each submodule's train/eval flag, every buffer (BatchNorm running
    statistics) and the caller's global RNG state (dropout masks, packages that reseed) on the CPU and ``device``.

    A train-mode model is thus attacked in its own mode (batch statistics, dropout) without a lasting trace.
    """
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            for module, was_training in modes:
                module.training = was_training
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)


def model_logits(model: nn.Module, x: Tensor) -> Tensor:
    """Run the model and check that it returns one row of logits per sample."""
    logits = model(x)
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise RobustlabError(
            f"the model returned {shape} for a batch of {x.shape[0]} inputs; a classifier must return "
            "logits of shape (N, num_classes) (wrap feature extractors with a linear head)"
        )
    return logits


def check_batch(
    x: Tensor, y: Tensor, target: Tensor | None, threat: ThreatModel, criterion: Criterion | None
) -> Criterion:
    """Refuse a batch that does not fit; the criterion of this call (misclassified, or top-1 = target)."""
    if x.dim() < 2 or x.shape[0] != y.shape[0] or (target is not None and target.shape[0] != y.shape[0]):
        shapes = f"{tuple(x.shape)}, labels {tuple(y.shape)}" + (
            f", targets {tuple(target.shape)}" if target is not None else ""
        )
        raise RobustlabError(f"inputs {shapes} do not match; give x of shape (N, ...) and labels of shape (N,)")
    threat.check_inputs(x)
    return criterion or (TargetedMisclassified() if target is not None else Misclassified())


def check_labels(labels: Tensor, num_classes: int, what: str = "labels") -> None:
    """Raise unless ``labels`` are integer class indices in ``[0, num_classes)``.

    Attacks skip this check for floating-point targets, which feature-space attacks (DeACL) use with a
    custom loss and criterion.
    """
    if labels.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.bool):
        raise RobustlabError(f"{what} must be integer class indices, got dtype {labels.dtype}")
    if labels.numel() and (labels.min().item() < 0 or labels.max().item() >= num_classes):
        raise RobustlabError(
            f"{what} range over [{labels.min().item()}, {labels.max().item()}] but the model has "
            f"{num_classes} classes; use indices 0..{num_classes - 1}"
        )


def check_first_logits(logits: Tensor, y: Tensor, target: Tensor | None, criterion: Criterion) -> None:
    """At the first logits an attack sees: labels and targets in range, a criterion that can hold."""
    num_classes = logits.shape[1]
    if not y.is_floating_point():  # float labels: feature-space attacks with their own loss and criterion
        check_labels(y, num_classes)
    if target is not None and not target.is_floating_point():
        check_labels(target, num_classes, what="targets")
    if hasattr(criterion, "check"):
        criterion.check(num_classes)


__all__ = [
    "Attack",
    "AttackBase",
    "AttackResult",
    "as_attack",
    "check_first_logits",
    "check_labels",
    "frozen_parameters",
    "model_logits",
    "untouched",
]
