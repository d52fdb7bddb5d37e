"""SimCLR (Chen et al. 2020): InfoNCE over two strongly augmented views, negatives from every DDP rank."""

from __future__ import annotations

from torch import Tensor

from robustlab.ssl.base import ContrastiveMethod
from robustlab.ssl.losses import info_nce


class SimCLR(ContrastiveMethod):
    """SimCLR's NT-Xent loss at ``temperature``."""

    name = "simclr"

    def loss(self, z1: Tensor, z2: Tensor) -> Tensor:
        return info_nce(z1, z2, self.temperature)


__all__ = ["SimCLR"]
