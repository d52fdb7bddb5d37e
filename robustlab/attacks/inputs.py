"""The randomness the gradient loop puts around a forward pass: input transforms applied before it (transfer attacks'
input diversity) and, for EOT, the forked and seeded global RNG a randomised model draws from."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor


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


def eot_rng(samples: int, generator: torch.Generator, device: torch.device) -> contextlib.AbstractContextManager:
    """For EOT: fork the global RNG (a randomised model draws from it) and seed it from the attack's generator, so
    each step's passes see fresh, reproducible randomness and the caller's RNG is untouched."""
    if samples == 1:
        return contextlib.nullcontext()
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device).item())

    @contextlib.contextmanager
    def forked() -> Iterator[None]:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield

    return forked()


__all__ = ["diverse_inputs", "eot_rng"]
