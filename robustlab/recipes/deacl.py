"""Stage 2 of DeACL (``robustlab deacl``): a robust student encoder distilled from a frozen SSL teacher (labels never
used), with the options of later papers (ProFeAT's projector, DynACL's annealed augmentation, a wider student)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.recipes.base import TrainingRunConfig, describe
from robustlab.threat import ThreatModel
from robustlab.training.run import TrainingSetup


@dataclass(frozen=True, kw_only=True)
class DeACLConfig(TrainingRunConfig):
    """``robustlab deacl``: a student of ``teacher`` (a spec or a module) trained with DeACL's loss at ``threat``
    (defaults: the paper's)."""

    kind: ClassVar[str] = "deacl"
    epoch_keys: ClassVar[tuple[str, ...]] = ("cos_teacher", "cos_adv_clean")

    teacher: str | nn.Module
    threat: ThreatModel | None = ThreatModel("linf", 8 / 255)
    beta: float = 2.0  # weight of the adversarial term
    steps: int = 5  # inner feature-PGD steps
    step_size: float | None = None  # inner PGD step size (default: eps/4)
    augment: str = "weak"  # "none" | "weak" | "strong"
    crop_scale: tuple[float, float] | None = None  # the augmentation's crop area (annealed: its smallest)
    init: str = "teacher"  # the student's start: "teacher" (a copy, the paper) or "random"
    center: bool = False  # cosines between batch-centred features
    projector: bool | nn.Module = False  # ProFeAT: True, the teacher's SSL projector from its run folder; or one
    anneal_augment: bool = False  # DynACL: the augmentation decays from strong to none over the run
    width_factor: int = 1  # a student K times wider than the teacher (init "random")
    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.5
    lr_schedule: str = "cosine"

    def build(self, device: torch.device) -> TrainingSetup:
        """The student encoder and DeACL's method with the frozen teacher (and projector)."""
        from robustlab.ssl import Augment, DeACL, arch_kwargs_of, check_width, frozen_teacher, make_student
        from robustlab.ssl.augment import AnnealedAugment
        from robustlab.ssl.encoder import load_projector

        check_width(self.width_factor, self.init)
        threat = self.needs_threat("trains the student adversarially at it")
        projector = self.projector if isinstance(self.projector, nn.Module) else None
        if self.projector is True:
            if not isinstance(self.teacher, str):
                raise RobustlabError("projector=True reads the teacher's SSL run folder: give the projector module")
            projector = load_projector(self.teacher, self.trust_checkpoint)
        train_set = self.split("train", self.n)
        teacher_net, arch = self.load(self.teacher, device)
        student = make_student(teacher_net, self.init, self.seed, self.width_factor).to(device)
        crop = tuple(self.crop_scale) if self.crop_scale is not None else None
        augment = Augment(self.augment, crop)
        if self.anneal_augment:
            augment = AnnealedAugment() if crop is None else AnnealedAugment(1.0, 0.0, crop_min=crop[0])
        teacher_augment = Augment("weak") if projector is not None else None  # ProFeAT: a weak view for the teacher
        method = DeACL(frozen_teacher(teacher_net), threat, self.beta, self.steps, self.step_size, augment, self.seed,
                       center=self.center, projector=projector, teacher_augment=teacher_augment)  # fmt: skip
        options = [("centred cosines", self.center), ("projector (ProFeAT)", projector is not None),
                   ("annealed augmentation (DynACL)", self.anneal_augment),
                   (f"{self.width_factor}x wider student", self.width_factor > 1)]  # fmt: skip
        teacher = describe(self.teacher)
        banner = (
            f"DeACL on {self.dataset} ({len(train_set)} images, labels unused), teacher {teacher}, {threat.norm} "
            f"eps={threat.eps:.4g}, beta={self.beta}, PGD-{self.steps}, student init {self.init}"
            + "".join(f", {name}" for name, on in options if on)
        )
        return TrainingSetup(
            student, method, train_set, self.train_config(), saved=student.net, summary_keys=self.epoch_keys,
            fits=(teacher_net,), method_info={"teacher": teacher, "augment": self.augment, "init": self.init},
            report={"dataset": self.dataset}, banner=banner,
            model_file={"arch": arch, "dataset": self.dataset, "stage": "deacl", "teacher": teacher,
                        "arch_kwargs": arch_kwargs_of(student.net)},
        )  # fmt: skip


__all__ = ["DeACLConfig"]
