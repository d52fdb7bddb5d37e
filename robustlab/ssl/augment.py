"""Batched SSL augmentations on [0, 1] tensors, every random draw from a passed generator; DynACL's annealed
strength (a function of the training progress, so a resumed run draws what an uninterrupted one would)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.attacks.options import number
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
        log_ratio: tuple[float, float] = (math.log(3 / 4), math.log(4 / 3)),
    ) -> None:
        if strength not in AUGMENT_STRENGTHS:
            raise RobustlabError(
                f"unknown augmentation strength {strength!r}; choose one of: {', '.join(AUGMENT_STRENGTHS)}"
            )
        self.strength = strength
        self.crop_scale = crop_scale or ((0.2, 1.0) if strength == "strong" else (0.6, 1.0))
        self.jitter, self.jitter_prob, self.gray_prob = jitter, jitter_prob, gray_prob
        self.log_ratio = log_ratio  # the crop's log aspect-ratio range

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
        lo_ratio, hi_ratio = self.log_ratio
        log_ratio = lo_ratio + (hi_ratio - lo_ratio) * self._rand(n, generator, dev)
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


def augment_at(strength: float, crop_min: float = 0.2) -> Augment:
    """DynACL's augmentation of ``strength`` s in [0, 1] (Luo et al., ICLR 2023): crop area in
    ``(1 - (1 - crop_min) s, 1)``, aspect-ratio range, brightness/contrast jitter (0.4 s, probability 0.8 s) and
    grayscale (probability 0.2 s) scaled by s, horizontal flip always. s = 1: the strong augmentation with crop
    area ``(crop_min, 1)``; s = 0: a horizontal flip only."""
    number("the augmentation strength", strength, low=0, high=1)
    return Augment(
        "strong", (1 - (1 - crop_min) * strength, 1.0), jitter=0.4 * strength, jitter_prob=0.8 * strength,
        gray_prob=0.2 * strength, log_ratio=(math.log(3 / 4) * strength, math.log(4 / 3) * strength),
    )  # fmt: skip


class AnnealedAugment:
    """DynACL's annealed augmentation: the strength decays linearly from ``start`` to ``end`` over training,
    ``s(p) = start + (end - start) p`` at progress p in [0, 1] (the global step over the run's last step), so it
    is a function of the step and a resumed run draws exactly what an uninterrupted one would.

    DynACL anneals from strong to weak because strong augmentation helps early (diverse views) and hurts late
    (the adversarial task on heavily distorted views is too hard to fit); ``crop_min`` is the crop area at s = 1.
    """

    def __init__(self, start: float = 1.0, end: float = 0.0, crop_min: float = 0.2) -> None:
        number("the annealing's start strength", start, low=0, high=1)
        number("the annealing's end strength", end, low=0, high=1)
        number("the crop's smallest area (crop_min)", crop_min, low=0, high=1)
        self.start, self.end, self.crop_min = start, end, crop_min

    def strength(self, progress: float) -> float:
        """The strength at ``progress`` in [0, 1] (clamped)."""
        p = min(max(progress, 0.0), 1.0)
        return self.start + (self.end - self.start) * p

    def at(self, progress: float) -> Augment:
        """The :class:`Augment` used at ``progress``."""
        return augment_at(self.strength(progress), self.crop_min)

    def __call__(self, x: Tensor, generator: torch.Generator, progress: float = 0.0) -> Tensor:
        return self.at(progress)(x, generator)

    def config(self) -> dict[str, float]:
        return {"start": self.start, "end": self.end, "crop_min": self.crop_min}


__all__ = ["AUGMENT_STRENGTHS", "AnnealedAugment", "Augment", "augment_at"]
