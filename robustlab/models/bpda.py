"""BPDA (backward pass differentiable approximation, Athalye et al. 2018): run a non-differentiable part of a model
forward as it is, and a differentiable stand-in (the identity by default) backward, so gradient attacks see through
it. The forward values are unchanged, so a model with BPDA placed in it predicts exactly what the original does."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from robustlab.errors import RobustlabError


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
        return stand_in + (out - stand_in).detach()  # the value of out, the gradient of the stand-in


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


__all__ = ["BPDA", "bpda", "check_modules", "masking_modules"]
