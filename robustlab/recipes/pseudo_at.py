"""Pseudo-supervised adversarial training (``robustlab pseudo-at``): a robust student of a frozen teacher's
embedding, k-means clusters or linear-head predictions (no labels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.recipes.base import TrainingRunConfig, describe
from robustlab.training.run import TrainingSetup


@dataclass(frozen=True, kw_only=True)
class PseudoATConfig(TrainingRunConfig):
    """``robustlab pseudo-at``: a student of ``teacher`` trained at ``threat`` on its ``targets``: ``"embedding"``
    (its features), ``"kmeans"`` (its k-means cluster of each image) or ``"linear"`` (its own head's labels)."""

    kind: ClassVar[str] = "pseudo-at"
    epoch_keys: ClassVar[tuple[str, ...]] = ("cos_teacher", "cos_teacher_adv", "adv_accuracy", "pseudo_label_agreement")

    teacher: str | nn.Module
    targets: str
    clusters: int = 10  # k of k-means
    kmeans_n: int = 10000  # training images k-means is fitted on
    loss: str = "ce"  # "ce" (PGD-AT; cosine for embeddings) | "trades"
    beta: float | None = None  # TRADES' weight (default 6; embedding targets: DeACL's 2)
    steps: int = 5  # inner PGD steps
    step_size: float | None = None  # inner step size (default: pgd 2.5*eps/steps, else eps/4)
    augment: str = "weak"
    init: str = "teacher"  # the student's start: "teacher" (a copy) or "random"
    batch_size: int = 256
    lr_schedule: str = "cosine"

    def build(self, device: torch.device) -> TrainingSetup:
        """The pseudo-labeler (k-means on the teacher's features, or its head), the student and the method."""
        from robustlab.ssl import Augment, PseudoAT, PseudoLabeler, kmeans_labeler, make_pseudo_student

        if self.targets != "kmeans" and self.clusters != 10:
            raise RobustlabError("--clusters only applies to --pseudo-targets kmeans")
        threat = self.needs_threat("trains the student adversarially at it")
        train_set = self.split("train", self.n)
        teacher, arch = self.load(self.teacher, device)
        labeler = PseudoLabeler(teacher) if self.targets == "linear" else None
        if self.targets == "kmeans":
            images = torch.stack([train_set[i][0] for i in range(min(self.kmeans_n, len(train_set)))]).to(device)
            labeler = kmeans_labeler(teacher, images, self.clusters, seed=self.seed)  # same on every rank (seeded)
        num_classes = labeler.num_classes if labeler is not None else None
        student = make_pseudo_student(teacher, self.targets, num_classes, self.init, self.seed).to(device)
        method = PseudoAT(
            self.targets, threat, teacher_net=teacher if self.targets == "embedding" else None, labeler=labeler,
            loss=self.loss, beta=self.beta, steps=self.steps, step_size=self.step_size, augment=Augment(self.augment),
            seed=self.seed,
        )  # fmt: skip
        name = describe(self.teacher)
        return TrainingSetup(
            student, method, train_set, self.train_config(), fits=(teacher,), summary_keys=self.epoch_keys,
            saved=student.net if self.targets == "embedding" else student,
            method_info={"teacher": name, "clusters": num_classes, "init": self.init, "augment": self.augment,
                         "steps": self.steps},
            report={"dataset": self.dataset},
            model_file={"arch": arch, "dataset": self.dataset, "stage": "pseudo-at", "targets": self.targets,
                        "outputs": "clusters" if self.targets == "kmeans" else "classes"},
            banner=f"pseudo-AT ({self.targets} targets, {self.loss}) on {self.dataset} ({len(train_set)} images), "
            f"teacher {name}, student init {self.init}, {threat.norm} eps={threat.eps:.4g}",
        )  # fmt: skip


__all__ = ["PseudoATConfig"]
