"""SimCo (Zhang et al. 2022): InfoNCE with a second temperature that reweights each positive (dual temperature)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from robustlab.ssl.augment import Augment
from robustlab.ssl.base import ContrastiveMethod
from robustlab.ssl.losses import simco_loss
from robustlab.training.method import check_number


class SimCo(ContrastiveMethod):
    """SimCo's loss at ``temperature`` (tau_alpha) and ``tau_beta``."""

    name = "simco"

    def __init__(
        self, temperature: float = 0.2, tau_beta: float = 1.0, augment: Augment | None = None, seed: int = 0
    ) -> None:
        super().__init__(temperature, augment, seed)
        check_number("tau beta (--tau-beta)", tau_beta, strict=True)
        self.tau_beta = tau_beta

    def config(self) -> dict[str, Any]:
        return {**super().config(), "tau_beta": self.tau_beta}

    def loss(self, z1: Tensor, z2: Tensor) -> Tensor:
        return simco_loss(z1, z2, self.temperature, self.tau_beta)


__all__ = ["SimCo"]
