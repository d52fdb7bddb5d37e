"""The one base of every training method: a "make the training input + loss" step with its own seeded randomness.

Contract (the loop in :mod:`robustlab.training.loop` calls these):

- ``training_loss(model, x, labels) -> (loss, stats)``: build the training input (attack, noise, views, ...) from
  the images ``x`` and the dataset's ``labels`` (self-supervised methods ignore them) and return a scalar loss and
  ``{name: float}`` stats for the log. ``model`` is the module to train the loss through (DDP-wrapped under
  torchrun); inner attacks run on :func:`robustlab.distributed.unwrap` ``(model)`` so that they cause no extra
  all-reduce, and take gradients w.r.t. their input only: ``attack.perturb(model, x, labels, threat)`` gives just
  ``x_adv``.
- ``setup(ctx)``: called once before training (seeds this rank's generator; subclasses move frozen teachers).
- ``check(config)``: refuses a training configuration the method cannot train with, before any work is done.
- ``state_dict()`` / ``load_state_dict(state)``: the random generator (and any extra state), saved in every
  checkpoint so that ``resume`` continues bit-for-bit.
- ``trainable_parameters(model)``: the parameters the optimizer updates (default: those that require grad).

A new method subclasses :class:`Method` and overrides ``training_loss`` (and ``name``); the rest has defaults.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from robustlab.training.config import TrainConfig, check_number  # check_number: the methods' argument checks

if TYPE_CHECKING:
    from robustlab.training.context import TrainContext


class Method:
    """A training method. Its randomness (noise, augmentations, the inner attacks' random starts) comes from one
    local generator per DDP rank, seeded from ``seed`` (``None``: the run's ``TrainConfig.seed``) and saved in
    checkpoints; the global RNG is never used."""

    name: str = "method"
    seed: int | None = None
    _generator: torch.Generator | None = None
    _rank: int = 0
    _run_seed: int = 0

    def training_loss(self, model: nn.Module, x: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Build the training input and return (scalar loss, stats for the log)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The method's settings, for reports."""
        return {"method": self.name}

    def check(self, config: TrainConfig) -> None:
        """Refuse a training configuration this method cannot train with (default: any is fine)."""

    def trainable_parameters(self, model: nn.Module) -> Iterable[nn.Parameter]:
        """The parameters the optimizer updates (default: those that require grad)."""
        return [p for p in model.parameters() if p.requires_grad]

    def setup(self, ctx: TrainContext) -> None:
        """Called by the training loop once: this rank's generator on the training device."""
        self._rank, self._run_seed, self._generator = ctx.rank, ctx.seed, None
        self.generator(ctx.device)

    def generator(self, device: torch.device | str) -> torch.Generator:
        """This rank's generator on ``device``'s type (created and seeded on first use)."""
        device = torch.device(device)
        if self._generator is None or self._generator.device.type != device.type:
            seed = self._run_seed if self.seed is None else self.seed
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(1_000_003 * seed + 7919 * self._rank + 17)
        return self._generator

    def attack_seed(self, device: torch.device | str) -> int:
        """A fresh seed for an inner attack's own generator, drawn from this one (random starts differ per step)."""
        gen = self.generator(device)
        return int(torch.randint(0, 2**62, (), generator=gen, device=gen.device).item())

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state() if self._generator is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("generator") is not None:
            gen = self._generator if self._generator is not None else self.generator("cpu")
            gen.set_state(state["generator"].to(torch.uint8).cpu())


__all__ = ["Method", "check_number"]
