"""The catastrophic-overfitting (CO) monitor: PGD and FGSM accuracy on a fixed training batch.

CO (Wong et al. 2020; papers.md): within an epoch, PGD accuracy collapses while FGSM accuracy stays high or
rises, because the model has become locally non-linear and the single FGSM step no longer finds the worst case.
The monitor flags CO when FGSM accuracy exceeds PGD accuracy by at least ``gap`` and PGD accuracy has collapsed:
fallen at least ``drop`` below its best, or to ``floor``, or below ``ratio`` times the FGSM accuracy.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from robustlab.attacks.presets import FGSM, PGD
from robustlab.errors import RobustlabError
from robustlab.models.mode import temporary_mode
from robustlab.threat import ThreatModel
from robustlab.training.context import Callback, Decision, TrainContext

log = logging.getLogger(__name__)
ON_CO = ("stop", "rollback", "continue")


class COMonitor(Callback):
    """Epoch-end (and optionally every ``every_steps`` steps) callback for :func:`robustlab.training.train`.

    Adds ``monitor_clean_acc``, ``monitor_fgsm_acc``, ``monitor_pgd_acc`` and ``co`` (0/1) to the epoch stats;
    on CO it returns ``on_co`` ("stop", "rollback" to the best checkpoint, or "continue"). Use
    ``best_metric="monitor_pgd_acc"`` in the TrainConfig to keep the best checkpoint by PGD accuracy.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        pgd_steps: int = 10,
        on_co: str = "continue",
        every_steps: int = 0,
        drop: float = 0.2,
        gap: float = 0.2,
        floor: float = 0.02,
        ratio: float = 0.25,
        seed: int = 0,
    ) -> None:
        if every_steps < 0:
            raise RobustlabError(f"--monitor-every must be >= 0 (0: epochs only), got {every_steps}")
        if on_co not in ON_CO:
            raise RobustlabError(f"unknown --on-co {on_co!r}; choose one of: {', '.join(ON_CO)}")
        self.x, self.y, self.threat = x, y, threat
        self.pgd = PGD(steps=pgd_steps, step_size=threat.eps / 4, seed=seed, early_stop=True)
        self.fgsm = FGSM()
        self.on_co, self.every_steps = on_co, int(every_steps)
        self.drop, self.gap, self.floor, self.ratio = drop, gap, floor, ratio
        self.best_pgd: float | None = None
        self.events: list[dict[str, Any]] = []  # every CO detection: epoch, step, accuracies
        self.checks: list[dict[str, float]] = []  # every measurement (epochs and steps)

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        """Clean, FGSM and PGD accuracy on the fixed batch (model in eval mode; its mode is restored)."""
        device = next(model.parameters()).device
        x, y = self.x.to(device), self.y.to(device)
        with temporary_mode(model, training=False):
            with torch.no_grad():
                correct = model(x).argmax(1) == y
            # robust = correct on the clean input and not broken by the attack (the evaluator's definition)
            fgsm = correct & ~self.fgsm(model, x, y, self.threat).success
            pgd = correct & ~self.pgd(model, x, y, self.threat).success
        mean = lambda t: t.float().mean().item()  # noqa: E731
        return {"monitor_clean_acc": mean(correct), "monitor_fgsm_acc": mean(fgsm), "monitor_pgd_acc": mean(pgd)}

    def is_co(self, acc: dict[str, float]) -> bool:
        pgd, fgsm = acc["monitor_pgd_acc"], acc["monitor_fgsm_acc"]
        fell = self.best_pgd is not None and self.best_pgd - pgd >= self.drop
        collapsed = fell or pgd <= self.floor or pgd <= self.ratio * fgsm
        return bool(collapsed and fgsm - pgd >= self.gap)

    def _check(self, ctx: TrainContext, where: str) -> Decision:
        acc = self.measure(ctx.model)
        co = self.is_co(acc)
        self.checks.append({"epoch": ctx.epoch, "step": ctx.step, "where": where, **acc, "co": float(co)})
        self.best_pgd = max(self.best_pgd or 0.0, acc["monitor_pgd_acc"])
        ctx.stats.update(acc)
        ctx.stats["co"] = float(co)
        if co:
            self.events.append({"epoch": ctx.epoch, "step": ctx.step, "where": where, **acc})
            log.warning(
                "catastrophic overfitting at epoch %d step %d: PGD accuracy %.3f (best %.3f), FGSM %.3f; action: %s",
                ctx.epoch,
                ctx.step,
                acc["monitor_pgd_acc"],
                self.best_pgd,
                acc["monitor_fgsm_acc"],
                self.on_co,
            )
            return self.on_co if self.on_co != "continue" else "continue"  # type: ignore[return-value]
        return "continue"

    def on_epoch_end(self, ctx: TrainContext) -> Decision:
        last = self.checks[-1] if self.checks else None
        if last is not None and last["step"] == ctx.step and last["epoch"] == ctx.epoch:  # measured at this step
            ctx.stats.update({k: v for k, v in last.items() if k.startswith("monitor_") or k == "co"})
            return "continue"  # a CO found at that step was already acted on
        return self._check(ctx, "epoch")

    def on_step_end(self, ctx: TrainContext) -> Decision:
        return self._check(ctx, "step")

    def state_dict(self) -> dict[str, Any]:
        return {"best_pgd": self.best_pgd, "events": self.events, "checks": self.checks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_pgd, self.events, self.checks = state["best_pgd"], state["events"], state["checks"]
