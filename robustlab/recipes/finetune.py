"""Fine-tuning an (SSL) encoder into a classifier (``robustlab finetune``): SLF (a linear head on clean data), ALF
(the head on PGD examples) or AFF (every weight with TRADES), then clean and PGD accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.recipes.base import TrainingRunConfig, describe
from robustlab.training.run import TrainingSetup

# A fresh linear head over frozen features trains sanely at 0.03 (first-epoch loss ~1.5 over the zoo's SimCLR and
# DeACL encoders; at 0.1 DeACL's larger features give a first-epoch loss of 6-17); adversarial protocols keep 0.1.
DEFAULT_LR = {"slf": 0.03, "alf": 0.1, "aff": 0.1}


@dataclass(frozen=True, kw_only=True)
class FineTuneConfig(TrainingRunConfig):
    """``robustlab finetune``: ``encoder``'s classifier (a spec or a module) fine-tuned with ``protocol``, then
    evaluated at ``threat`` on ``eval_n`` test items."""

    kind: ClassVar[str] = "finetune"
    epoch_keys: ClassVar[tuple[str, ...]] = ("accuracy", "adv_accuracy", "kl")

    encoder: str | nn.Module
    protocol: str  # "slf" | "alf" | "aff"
    keep_head: bool = False  # start from the encoder's own head (e.g. an slf run's)
    num_classes: int | None = None  # the head's outputs (default: the dataset's classes)
    steps: int = 10  # inner attack steps (alf, aff)
    step_size: float | None = None  # inner step size (default: alf 2.5*eps/steps, aff eps/4)
    beta: float = 6.0  # TRADES' weight (aff)
    eval_n: int = 1000  # test items of the final evaluation (0: none)
    eval_steps: int = 20
    eval_restarts: int = 1
    autoattack: bool = False
    batch_size: int = 256
    lr: float | None = None  # None: DEFAULT_LR of the protocol
    lr_schedule: str = "cosine"

    def __post_init__(self) -> None:
        if self.protocol not in DEFAULT_LR:
            raise RobustlabError(f"unknown fine-tuning protocol {self.protocol!r}; choose one of: slf, alf, aff")
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.protocol])
        if self.threat is None and (self.protocol != "slf" or self.eval_n > 0):
            raise RobustlabError(
                f"give --eps: {self.protocol} "
                + ("trains adversarially" if self.protocol != "slf" else "is evaluated")
                + " at it (or pass --eval-n 0 to skip the evaluation of slf)"
            )

    def build(self, device: torch.device) -> TrainingSetup:
        """The classifier with a fresh (or its own) head, the protocol's method and the final evaluation."""
        from robustlab.data import dataset_info
        from robustlab.ssl import FineTune, prepare_classifier
        from robustlab.training import FinalEvaluation

        train_set = self.split("train", self.n)
        num_classes = self.num_classes or dataset_info(self.dataset)["num_classes"]
        if num_classes is None:  # imagefolder: its class folders
            num_classes = len(getattr(getattr(train_set, "dataset", train_set), "classes", []) or [0])
        net, arch = self.load(self.encoder, device)
        net = prepare_classifier(net, self.protocol, num_classes, self.keep_head, self.seed).to(device)
        method = FineTune(self.protocol, self.threat, self.steps, self.step_size, self.beta, self.seed)
        evaluation = None
        if self.eval_n > 0:
            evaluation = FinalEvaluation(self.split("test", self.eval_n), self.threat, self.autoattack,
                                         self.eval_steps, self.eval_restarts, seed=self.seed,
                                         progress=self.progress)  # fmt: skip
        name = describe(self.encoder)
        return TrainingSetup(
            net, method, train_set, self.train_config(), evaluation=evaluation, saved=net, num_classes=num_classes,
            method_info={"encoder": name}, report={"dataset": self.dataset},
            model_file={"arch": arch, "dataset": self.dataset, "stage": f"finetune-{self.protocol}", "encoder": name},
            banner=f"{self.protocol.upper()} of {name} on {self.dataset} ({len(train_set)} images), "
            f"{self.optimizer} lr {self.lr:g}",
        )  # fmt: skip


__all__ = ["DEFAULT_LR", "FineTuneConfig"]
