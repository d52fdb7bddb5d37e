"""BPDA (backward pass differentiable approximation, Athalye et al. 2018): run a non-differentiable part of a model
forward as it is, and a differentiable stand-in (the identity by default) backward, so gradient attacks see through
it. The forward values are unchanged, so a model with BPDA placed in it predicts exactly what the original does."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.errors import RobustlabError


class _ValueOf(torch.autograd.Function):
    """``value`` forward, exactly; its gradient handed to ``stand_in`` unchanged (reshaped to it)."""

    @staticmethod
    def forward(ctx: Any, stand_in: Tensor, value: Tensor) -> Tensor:  # type: ignore[override]
        ctx.shape = stand_in.shape
        return value.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad.reshape(ctx.shape), None


def value_of(stand_in: Tensor, value: Tensor) -> Tensor:
    """A tensor equal to ``value`` (bit for bit) whose gradient flows to ``stand_in`` as the identity: the
    straight-through estimator without the rounding error of ``stand_in + (value - stand_in).detach()``."""
    return _ValueOf.apply(stand_in, value)


class BPDA(nn.Module):
    """``module`` forward, ``backward`` (a module of the same input and output shapes; identity if None) backward."""

    def __init__(self, module: nn.Module, backward: nn.Module | None = None) -> None:
        super().__init__()
        self.module, self.backward = module, backward

    def forward(self, x: Tensor) -> Tensor:
        out = self.module(x)
        if not (torch.is_grad_enabled() and isinstance(x, Tensor) and x.requires_grad):
            return out
        stand_in = x if self.backward is None else self.backward(x)
        if stand_in.shape != out.shape:
            raise RobustlabError(
                f"BPDA on {type(self.module).__name__}: its output {tuple(out.shape)} differs from the stand-in's "
                f"{tuple(stand_in.shape)}; give a backward module of the output's shape"
            )
        return value_of(stand_in, out)  # the value of out, the gradient of the stand-in


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    modules = dict(model.named_modules())
    if name not in modules or not name:
        choices = ", ".join(n for n in modules if n)[:300]
        raise RobustlabError(f"--bpda: the model has no module {name!r}; its modules are: {choices}")
    parent, _, leaf = name.rpartition(".")
    return (modules[parent] if parent else model), leaf


def check_modules(model: nn.Module, names: Sequence[str]) -> None:
    """One error line for a module name ``model`` does not have (before any work)."""
    for name in names:
        _parent(model, name)


@contextlib.contextmanager
def bpda(model: nn.Module, names: Sequence[str], backward: nn.Module | None = None) -> Iterator[nn.Module]:
    """Place :class:`BPDA` on the modules ``names`` (as ``model.named_modules()`` names them) for the ``with`` block,
    and put the originals back after it."""
    swapped = []
    try:
        for name in names:
            parent, leaf = _parent(model, name)
            original = parent._modules[leaf]
            parent._modules[leaf] = BPDA(original, backward)
            swapped.append((parent, leaf, original))
        yield model
    finally:
        for parent, leaf, original in reversed(swapped):
            parent._modules[leaf] = original


def input_stage(model: nn.Module, x: Tensor) -> str | None:
    """The first module with parameters of its own that the forward pass calls on a tensor of the input's size per
    sample: where the input pipeline ends, whether its transforms are named modules or code inside ``forward``."""
    calls: list[tuple[str, Tensor]] = []

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], Tensor):
                calls.append((name, args[0]))

        return hook

    owners = [(n, m) for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    hooks = [module.register_forward_pre_hook(record(name)) for name, module in owners]
    try:
        with torch.no_grad():
            model(x[:1].detach())
    finally:
        for hook in hooks:
            hook.remove()
    return next((name for name, inp in calls if inp.numel() == x[:1].numel()), None)


@contextlib.contextmanager
def straight_through(model: nn.Module, stage: str) -> Iterator[nn.Module]:
    """Identity backward over the whole input pipeline for the ``with`` block: the input of module ``stage`` (see
    :func:`input_stage`) keeps its forward value and takes the gradient of the model's input unchanged, so rounding,
    filtering or noise before it, named or inside ``forward``, is BPDA'd as a whole."""
    modules = dict(model.named_modules())
    if stage not in modules or not stage:
        raise RobustlabError(f"straight-through: the model has no module {stage!r}")
    state: dict[str, Any] = {}

    def enter(module: nn.Module, args: tuple) -> None:
        state.update(x=args[0] if args else None, done=False)

    def swap(module: nn.Module, args: tuple) -> tuple | None:
        x, inp = state.get("x"), args[0] if args else None
        if state.get("done") or not isinstance(x, Tensor) or not isinstance(inp, Tensor) or not x.requires_grad:
            return None
        state["done"] = True  # once per forward pass: a module called again later keeps its own input
        if x.numel() != inp.numel():
            return None
        return (value_of(x, inp), *args[1:])

    hooks = [model.register_forward_pre_hook(enter), modules[stage].register_forward_pre_hook(swap)]
    try:
        yield model
    finally:
        for hook in hooks:
            hook.remove()


def masking_modules(model: nn.Module, x: Tensor) -> list[str]:
    """The leaf modules whose output carries no gradient back to their input although the input needs one (zero,
    NaN/inf or a cut graph), and whose output has the input's shape (so the identity can stand in backward)."""
    seen: dict[str, tuple[Tensor, Tensor]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:  # returns None: the output stays as it is
            if args and name not in seen:
                seen[name] = (args[0], out)

        return hook

    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    hooks = [module.register_forward_hook(record(name)) for name, module in leaves]
    try:
        with torch.enable_grad():
            model(x.detach().clone().requires_grad_(True))
    finally:
        for hook in hooks:
            hook.remove()
    found = []
    for name, (inp, out) in seen.items():
        if not (isinstance(inp, Tensor) and isinstance(out, Tensor) and inp.requires_grad and inp.shape == out.shape):
            continue
        if not out.requires_grad:
            found.append(name)
            continue
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.device, out.dtype)
        (grad,) = torch.autograd.grad(out, inp, probe, retain_graph=True, allow_unused=True)
        if grad is None or not bool(torch.isfinite(grad).all()) or bool((grad == 0).all()):
            found.append(name)
    return found


__all__ = ["BPDA", "bpda", "value_of", "check_modules", "input_stage", "masking_modules", "straight_through"]
