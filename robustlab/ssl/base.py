"""The base of the contrastive SSL methods (solo-learn's shape): two augmented views of a batch through the
encoder + projector in one forward pass, and a contrastive loss a subclass names. Labels are never used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.ssl.augment import Augment
from robustlab.training.method import Method, check_number

if TYPE_CHECKING:
    from robustlab.training.loop import TrainConfig


class ContrastiveMethod(Method):
    """A contrastive training method for :class:`robustlab.ssl.SSLModel`; subclasses implement :meth:`loss`."""

    name = "contrastive"

    def __init__(self, temperature: float = 0.2, augment: Augment | None = None, seed: int = 0) -> None:
        check_number("the temperature (--temperature)", temperature, strict=True)
        self.temperature = temperature
        self.augment = augment or Augment("strong")
        self.seed = seed

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "temperature": self.temperature}

    def check(self, config: TrainConfig) -> None:
        """A batch of one image has no negatives: the loss would be 0 and nothing would be learned."""
        if config.batch_size < 2:
            raise RobustlabError(
                f"{self.name} contrasts each image with the others in its batch: --batch-size must be >= 2, "
                f"got {config.batch_size}"
            )

    def views(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Two augmented views of the batch, drawn from this rank's generator."""
        g = self.generator(x.device)
        return self.augment(x, g), self.augment(x, g)

    def loss(self, z1: Tensor, z2: Tensor) -> Tensor:
        raise NotImplementedError

    def training_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Two augmented views, one forward pass, the contrastive loss."""
        v1, v2 = self.views(x)
        z = model(torch.cat([v1, v2]))
        z1, z2 = z.chunk(2)
        loss = self.loss(z1, z2)
        with torch.no_grad():
            alignment = F.cosine_similarity(z1, z2).mean().item()
        return loss, {"loss": loss.item(), "positive_cos": alignment}


__all__ = ["ContrastiveMethod"]
