"""Input-preprocessing defences known to mask gradients (Athalye et al. 2018), for checking that an evaluation sees
through them: bit-depth reduction (zero gradients) and Gaussian input noise (a random forward pass)."""

from __future__ import annotations

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


def defended(model: nn.Module, preprocess: nn.Module) -> nn.Sequential:
    """``preprocess`` then ``model``, as modules named ``preprocess`` and ``net`` (``--bpda preprocess`` finds it)."""
    seq = nn.Sequential()
    seq.add_module("preprocess", preprocess)
    seq.add_module("net", model)
    return seq.eval()


__all__ = ["GaussianNoise", "Quantize", "defended"]
