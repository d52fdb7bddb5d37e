"""Input-preprocessing defences known to mask gradients (Athalye et al. 2018), for checking that an evaluation sees
through them: bit-depth reduction (zero gradients; as a module or inside ``forward``), a median filter with a zero
gradient and Gaussian input noise (a random forward pass)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Quantize(nn.Module):
    """``round(levels * x) / levels``: the input gradient is zero almost everywhere."""

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.levels).round() / self.levels


class GaussianNoise(nn.Module):
    """``x + sigma * N(0, 1)`` at every forward pass (eval mode too), drawn from the global RNG."""

    def __init__(self, sigma: float = 0.3) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: Tensor) -> Tensor:
        return x + self.sigma * x.new_empty(x.shape).normal_()


class MedianFilter(nn.Module):
    """A ``size x size`` median filter (reflect padding) whose input gradient is zero: the output's value, ``0 * x``
    its gradient, as a defence that detaches its filter would give."""

    def __init__(self, size: int = 3) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        pad = self.size // 2
        patches = F.unfold(F.pad(x.detach(), (pad, pad, pad, pad), mode="reflect"), self.size)
        median = patches.view(n, c, self.size * self.size, h * w).median(dim=2).values.view(n, c, h, w)
        return median + 0 * x


class QuantizedInput(nn.Module):
    """``net`` on ``round(levels * x) / levels`` computed inside ``forward``: no module to name, so BPDA by module
    name cannot reach the rounding."""

    def __init__(self, net: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.net, self.levels = net, levels
        self.train(net.training)

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x * self.levels).round() / self.levels)


def defended(model: nn.Module, preprocess: nn.Module) -> nn.Sequential:
    """``preprocess`` then ``model``, as modules named ``preprocess`` and ``net`` (``--bpda preprocess`` finds it)."""
    seq = nn.Sequential()
    seq.add_module("preprocess", preprocess)
    seq.add_module("net", model)
    return seq.eval()


__all__ = ["GaussianNoise", "MedianFilter", "Quantize", "QuantizedInput", "defended"]
