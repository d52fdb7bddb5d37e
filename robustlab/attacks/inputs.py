"""Input transforms the gradient loop applies before a forward pass (transfer attacks' input diversity)."""

from __future__ import annotations

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


__all__ = ["diverse_inputs"]
