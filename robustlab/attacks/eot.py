"""EOT through the model (expectation over transformation, Athalye et al. 2018), for attacks without an
``eot_samples`` option: the attack sees a model whose logits are the mean over ``samples`` forward passes of the
randomised model, each with fresh randomness (the global RNG, which such models draw from, is forked around the
passes and seeded from the attack's own generator, so the caller's RNG is untouched and a seeded call repeats)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustlab.attacks import options
from robustlab.attacks.protocol import Attack, AttackResult
from robustlab.threat import ThreatModel


class MeanOverPasses(nn.Module):
    """``model``'s logits averaged over ``samples`` passes, the global RNG forked and seeded from ``generator``."""

    def __init__(self, model: nn.Module, samples: int, generator: torch.Generator) -> None:
        super().__init__()
        self.model, self.samples, self.generator = model, samples, generator
        self.training = model.training

    def forward(self, x: Tensor) -> Tensor:
        seed = int(torch.randint(0, 2**62, (), generator=self.generator).item())
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return torch.stack([self.model(x) for _ in range(self.samples)]).mean(0)


class EOTAttack:
    """``attack`` run on :class:`MeanOverPasses` of the model (its logits and success are over the mean logits)."""

    def __init__(self, attack: Attack, samples: int = 10, seed: int = 0) -> None:
        self.attack, self.samples, self.seed = attack, options.whole("samples", samples), options.seed(seed)
        self.name = f"eot-{getattr(attack, 'name', 'attack')}"

    def config(self) -> dict:
        """The inner attack's configuration and the EOT samples."""
        return {**self.attack.config(), "eot_samples": self.samples, "eot": "mean logits", "eot_seed": self.seed}

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        """Attack the mean over passes."""
        expected = MeanOverPasses(model, self.samples, torch.Generator().manual_seed(self.seed))
        if target is None:
            return self.attack(expected, x, y, threat)
        return self.attack(expected, x, y, threat, target=target)


__all__ = ["EOTAttack", "MeanOverPasses"]
