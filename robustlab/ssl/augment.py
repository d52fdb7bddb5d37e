"""Batched SSL augmentations on [0, 1] tensors, every random draw from a passed generator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.errors import RobustlabError

AUGMENT_STRENGTHS = ("strong", "weak", "none")


class Augment:
    """Batched SSL augmentations on [0, 1] tensors: random resized crop, horizontal flip, and (strong only)
    brightness/contrast jitter and random grayscale; every random draw comes from the passed generator.

    ``strength="strong"`` is SimCLR's recipe; ``"weak"`` (crop + flip) is DeACL's stage-2 augmentation.
    """

    def __init__(
        self,
        strength: str = "strong",
        crop_scale: tuple[float, float] | None = None,
        jitter: float = 0.4,
        jitter_prob: float = 0.8,
        gray_prob: float = 0.2,
    ) -> None:
        if strength not in AUGMENT_STRENGTHS:
            raise RobustlabError(
                f"unknown augmentation strength {strength!r}; choose one of: {', '.join(AUGMENT_STRENGTHS)}"
            )
        self.strength = strength
        self.crop_scale = crop_scale or ((0.2, 1.0) if strength == "strong" else (0.6, 1.0))
        self.jitter, self.jitter_prob, self.gray_prob = jitter, jitter_prob, gray_prob

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if self.strength == "none":
            return x
        x = self.crop_flip(x, generator)
        if self.strength == "strong":
            x = self.color(x, generator)
        return x

    def _rand(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        return torch.rand(n, generator=generator, device=generator.device).to(device)

    def crop_flip(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Random resized crop (area in ``crop_scale``, aspect 3/4..4/3) and a horizontal flip with p = 0.5."""
        n, dev = x.shape[0], x.device
        lo, hi = self.crop_scale
        area = lo + (hi - lo) * self._rand(n, generator, dev)
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * self._rand(n, generator, dev)
        ratio = log_ratio.exp()
        w = (area * ratio).sqrt().clamp(max=1.0)
        h = (area / ratio).sqrt().clamp(max=1.0)
        cx = (1 - w) * (2 * self._rand(n, generator, dev) - 1)
        cy = (1 - h) * (2 * self._rand(n, generator, dev) - 1)
        flip = torch.where(self._rand(n, generator, dev) < 0.5, -1.0, 1.0).to(dev)
        theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def color(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Brightness and contrast jitter (with probability ``jitter_prob``), then random grayscale."""
        n, dev = x.shape[0], x.device
        shape = (n,) + (1,) * (x.dim() - 1)
        apply = (self._rand(n, generator, dev) < self.jitter_prob).view(shape)
        brightness = (1 + self.jitter * (2 * self._rand(n, generator, dev) - 1)).view(shape)
        contrast = (1 + self.jitter * (2 * self._rand(n, generator, dev) - 1)).view(shape)
        mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        jittered = ((x * brightness - mean * brightness) * contrast + mean * brightness).clamp(0, 1)
        x = torch.where(apply, jittered, x)
        if x.shape[1] == 3:
            gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x)
            x = torch.where((self._rand(n, generator, dev) < self.gray_prob).view(shape), gray, x)
        return x


__all__ = ["AUGMENT_STRENGTHS", "Augment"]
