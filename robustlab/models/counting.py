"""The one counter of what an answer cost: forward passes and input-gradient backward passes of a model, in images.

``with count_passes(model) as passes: attack(model, x, y, threat)`` counts every image that goes through
``model`` forward (a batch of 256 counts 256, whatever runs the model: robustlab's attacks, EOT, restarts,
adapters such as AutoAttack and torchattacks) and every image whose gradient flows back to the model's input
(``torch.autograd.grad`` or ``.backward()``: an EOT step over 10 draws of 256 images counts 2560). Weight-only
backward passes (training) do not reach the input and are not counted. The model object, its outputs, dtypes and
train/eval mode are untouched: the count sits in a forward pre-hook (an identity autograd function on the input),
so module names (BPDA), ``isinstance`` checks and adapters see the same model. Counters nest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class PassCount:
    """Images through the model forward (``forward``) and input gradients back to its input (``backward``)."""

    forward: int = 0
    backward: int = 0

    def __add__(self, other: PassCount) -> PassCount:
        return PassCount(self.forward + other.forward, self.backward + other.backward)

    def __sub__(self, other: PassCount) -> PassCount:
        return PassCount(self.forward - other.forward, self.backward - other.backward)

    def copy(self) -> PassCount:
        """A snapshot (the live counter keeps counting)."""
        return PassCount(self.forward, self.backward)

    def to_dict(self) -> dict[str, int]:
        """The report's keys: ``forward_passes``, ``backward_passes``."""
        return {"forward_passes": int(self.forward), "backward_passes": int(self.backward)}

    @classmethod
    def from_dict(cls, d: dict | None) -> PassCount:
        """Inverse of :meth:`to_dict`; a report written before passes were counted gives zeros."""
        d = d or {}
        return cls(int(d.get("forward_passes", 0)), int(d.get("backward_passes", 0)))


class _CountBackward(torch.autograd.Function):
    """The identity; its backward adds the batch size of the gradient reaching the model's input."""

    @staticmethod
    def forward(ctx, x: Tensor, count: PassCount) -> Tensor:  # type: ignore[override]
        ctx.count = count
        return x.clone()  # not a view: a model may write into its input in place (a view would forbid it)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        ctx.count.backward += grad.shape[0] if grad.dim() else 1
        return grad, None


class PassCounter(nn.Module):
    """A thin wrapper for models that take no hooks (TorchScript): counts as :func:`count_passes` does."""

    def __init__(self, model: nn.Module, count: PassCount | None = None) -> None:
        super().__init__()
        self.model, self.count = model, count if count is not None else PassCount()
        self.training = model.training

    def forward(self, x: Tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.model(_counted(x, self.count), *args, **kwargs)


def _counted(x: object, count: PassCount) -> object:
    """``x`` after counting its images forward, wrapped so the gradient back to it is counted."""
    if not isinstance(x, Tensor):
        return x
    count.forward += x.shape[0] if x.dim() else 1
    if torch.is_grad_enabled() and x.requires_grad:
        return _CountBackward.apply(x, count)
    return x


@contextlib.contextmanager
def count_passes(model: nn.Module, count: PassCount | None = None) -> Iterator[PassCount]:
    """Count the passes of ``model`` inside the block into ``count`` (a new :class:`PassCount` by default).

    A TorchScript model takes no hooks: count its calls through :class:`PassCounter` instead."""
    count = count if count is not None else PassCount()

    def hook(module: nn.Module, args: tuple) -> tuple | None:
        if not args:
            return None
        return (_counted(args[0], count), *args[1:])

    handle = model.register_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def countable(model: nn.Module) -> bool:
    """Whether :func:`count_passes` can hook ``model`` (TorchScript modules take no hooks)."""
    return not isinstance(model, torch.jit.ScriptModule)


@contextlib.contextmanager
def counted_model(model: nn.Module, count: PassCount | None = None) -> Iterator[tuple[nn.Module, PassCount]]:
    """``(model to call, count)``: ``model`` itself, hooked, or a :class:`PassCounter` around a TorchScript model."""
    count = count if count is not None else PassCount()
    if not countable(model):
        yield PassCounter(model, count), count
        return
    with count_passes(model, count):
        yield model, count


__all__ = ["PassCount", "PassCounter", "count_passes", "countable", "counted_model"]
