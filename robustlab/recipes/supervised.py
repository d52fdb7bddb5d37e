"""Supervised adversarial training (``robustlab train``): a training method (NoiseAug, FGSM-RS, N-FGSM, GradAlign,
PGD-AT, ...) with the catastrophic-overfitting monitor and a final PGD-50-10 evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from robustlab.recipes.base import TrainingRunConfig, describe
from robustlab.training.run import TrainingSetup


@dataclass(frozen=True, kw_only=True)
class ATConfig(TrainingRunConfig):
    """``robustlab train``: ``model`` (an architecture trained from scratch, or a model to start from) trained with
    ``method`` against ``threat``; ``None`` method options take the method's defaults."""

    kind: ClassVar[str] = "train"
    epoch_keys: ClassVar[tuple[str, ...]] = ("monitor_clean_acc", "monitor_fgsm_acc", "monitor_pgd_acc")

    method: str
    model: str | nn.Module
    num_classes: int | None = None  # the model's outputs (default: the training set's classes for an architecture)
    step_size: float | None = None  # of the method's attack (default: the method's multiple of eps)
    noise: str | None = None  # noiseaug: "uniform" | "gaussian"
    noise_sigma: float | None = None  # noiseaug: noise scale in units of eps
    noise_multiple: float | None = None  # n-fgsm: noise U(-m eps, m eps)
    gradalign_lambda: float | None = None
    steps: int | None = None  # pgd: inner PGD steps
    monitor_n: int = 512  # training samples the CO monitor attacks (0: off)
    monitor_every: int = 0  # also check every N steps (0: epoch ends only)
    on_co: str = "rollback"  # "stop" | "rollback" | "continue"
    eval_n: int = 1000  # test items of the final PGD-50-10 evaluation (0: none)
    eval_steps: int = 50
    eval_restarts: int = 10
    autoattack: bool = False

    def build(self, device: torch.device) -> TrainingSetup:
        """The method, the model (fresh or loaded), the CO monitor and the final evaluation."""
        from robustlab.data import num_classes_of
        from robustlab.defenses import COMonitor, make_method
        from robustlab.models import ARCHITECTURES, split_weights
        from robustlab.training import FinalEvaluation

        threat = self.needs_threat("trains adversarially at it")
        method = make_method(
            self.method, threat, self.step_size, noise=self.noise, noise_sigma=self.noise_sigma,
            noise_multiple=self.noise_multiple, lam=self.gradalign_lambda, steps=self.steps,
        )  # fmt: skip
        train_set = self.split("train", self.n)
        classes = num_classes_of(train_set, self.dataset)  # an image folder's: its class folders
        fresh = isinstance(self.model, str) and split_weights(self.model)[0] in ARCHITECTURES
        outputs = self.num_classes or (classes if fresh else None)  # a fresh net fits the data
        model, arch = self.load(self.model, device, num_classes=outputs, dataset=self.dataset, seed=self.seed,
                                input_shape=train_set[0][0].shape)  # fmt: skip
        callbacks = []
        if self.monitor_n > 0:
            xs, ys = zip(*(train_set[i] for i in range(min(self.monitor_n, len(train_set)))))
            callbacks.append(COMonitor(torch.stack(xs), torch.tensor(ys), threat, on_co=self.on_co,
                                       every_steps=self.monitor_every, seed=self.seed))  # fmt: skip
        evaluation = None
        if self.eval_n > 0:
            evaluation = FinalEvaluation(self.split("test", self.eval_n), threat, self.autoattack, self.eval_steps,
                                         self.eval_restarts, seed=self.seed, progress=self.progress)  # fmt: skip
        config = self.train_config(best_metric="monitor_pgd_acc" if self.monitor_n > 0 else None)
        name = describe(self.model)
        return TrainingSetup(
            model, method, train_set, config, callbacks, evaluation, num_classes=classes,
            curves_title=f"{method.name}, eps={threat.eps:.4g}", report={"model": name, "dataset": self.dataset},
            model_file={"arch": arch, "dataset": self.dataset, "stage": "train", "method": self.method},
            banner=f"training {name} on {self.dataset} with {method.name} ({threat.norm} eps={threat.eps:.4g})"
            + (f"; then PGD-{self.eval_steps}-{self.eval_restarts} on {self.eval_n} test images (--eval-n)"
               if evaluation else ""),
        )  # fmt: skip


__all__ = ["ATConfig"]
