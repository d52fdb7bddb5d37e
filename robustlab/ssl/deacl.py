"""DeACL stage 2 (Zhang et al., ECCV 2022): a student encoder learns a frozen SSL teacher's features robustly.

Per sample ``L = -cos(f(x), T(x)) - beta * cos(f(x'), f(x))`` with ``x'`` from a feature-space PGD that
maximises ``-cos(f(x'), T(x))``. The PGD is the library's one gradient loop (:class:`GradientAttack`) with a
cosine loss on features, float feature targets and a criterion that never stops early. Labels are never used.

Options from later papers: ProFeAT's distillation through the teacher's frozen projector with a weakly augmented
teacher view (``projector``, ``teacher_augment``), DynACL's annealed augmentation (``augment=AnnealedAugment()``)
and a student wider than the teacher (``make_student(..., width_factor=2)``). The student, the frozen teacher and
the frozen projector are built in :mod:`robustlab.ssl.student`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks.base import GradientAttack
from robustlab.criteria import NeverSucceeds
from robustlab.distributed import unwrap
from robustlab.ssl.augment import AnnealedAugment, Augment
from robustlab.ssl.student import frozen_projector
from robustlab.threat import ThreatModel
from robustlab.training.context import TrainContext
from robustlab.training.method import Method, check_number

log = logging.getLogger(__name__)


def negative_cosine(features: Tensor, target: Tensor) -> Tensor:
    """Per-sample ``-cos(features, target)``: the feature-space attack loss (higher = further from target)."""
    return -F.cosine_similarity(features, target, dim=1)


class LevelCosine:
    """Per-sample ``-cos`` at the feature level plus ``-cos`` at the projector level, for rows
    ``[feature, projection]`` split at column ``split``: the feature PGD's loss under projector distillation."""

    def __init__(self, split: int) -> None:
        self.split = split
        self.__name__ = "negative_cosine_feature_projection"

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        s = self.split
        return negative_cosine(output[:, :s], target[:, :s]) + negative_cosine(output[:, s:], target[:, s:])


def feature_pgd(
    steps: int = 5, step_size: float | None = None, seed: int = 0, split: int | None = None
) -> GradientAttack:
    """PGD in feature space: random start, ``steps`` signed steps (default size eps/4) on ``-cos(f(x'), t)``
    (with ``split``: on :class:`LevelCosine`, the sum over the feature and projector levels).

    Call it as ``attack(encoder, x, target_features, threat)``.
    """
    loss = negative_cosine if split is None else LevelCosine(split)
    return GradientAttack(
        steps=steps, step_size=step_size, loss=loss, random_start=True, criterion=NeverSucceeds(), seed=seed
    )


def deacl_loss(
    f_clean: Tensor, f_adv: Tensor, t_clean: Tensor, beta: float = 2.0, center: bool = False
) -> tuple[Tensor, dict[str, float]]:
    """DeACL's objective, averaged over the batch: ``-cos(f(x), T(x)) - beta * cos(f(x'), f(x))``.

    With ``center`` the cosines are taken between features minus their batch means (the student's clean mean
    for ``f(x)`` and ``f(x')``, the teacher's for ``T(x)``): see :class:`DeACL`.
    """
    if center:
        mean = f_clean.mean(0, keepdim=True)
        f_clean, f_adv, t_clean = f_clean - mean, f_adv - mean, t_clean - t_clean.mean(0, keepdim=True)
    to_teacher = F.cosine_similarity(f_clean, t_clean, dim=1).mean()
    consistency = F.cosine_similarity(f_adv, f_clean, dim=1).mean()
    loss = -to_teacher - beta * consistency
    return loss, {"loss": loss.item(), "cos_teacher": to_teacher.item(), "cos_adv_clean": consistency.item()}


class Shifted(nn.Module):
    """``encoder(x) - shift``: the feature PGD's view of a centred student."""

    def __init__(self, encoder: nn.Module, shift: Tensor) -> None:
        super().__init__()
        self.encoder, self.shift = encoder, shift

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x) - self.shift


class Projected(nn.Module):
    """``[f(x), P(f(x))]``: the student's features and their projection by the frozen projector ``P``."""

    def __init__(self, encoder: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.encoder, self.projector = encoder, projector

    def forward(self, x: Tensor) -> Tensor:
        features = self.encoder(x)
        return torch.cat([features, self.projector(features)], 1)


class DeACL(Method):
    """DeACL as a training :class:`Method`: ``model`` is the student :class:`Encoder`; labels are ignored.

    Args:
        teacher: the frozen teacher encoder (see :func:`~robustlab.ssl.student.frozen_teacher`).
        threat: the threat model of the inner feature PGD (the paper: Linf 8/255 on CIFAR-10).
        beta: weight of the adversarial consistency term (paper: 2).
        steps, step_size: the inner PGD (paper: 5 steps of eps/4, random start).
        augment: the student's stage-2 augmentation (paper: weak, crop + flip); an :class:`AnnealedAugment`
            decays from strong to weak with the global step (DynACL), so a resumed run is bit-for-bit.
        center: take every cosine (loss and PGD target) between batch-centred features. Off by default (the
            paper's loss). Post-ReLU features without a normalisation layer (the small CNN's) share a large
            common direction; the plain cosine then lets the student grow that shared component, which
            raises ``cos(f(x'), f(x))`` for any x' without making the class-bearing part robust. Centring
            removes that shortcut (Fashion-MNIST, random student: +7 points of SLF PGD-10 accuracy; the README's
            SSL benchmark). Costs one extra no-grad student forward per step. Under DDP each rank centres with
            its own batch's mean.
        projector: the teacher's SSL projector (ProFeAT, Walve et al. 2024): kept frozen on top of the student,
            the loss is DeACL's at the feature level plus DeACL's at the projector output, and the PGD maximises
            the sum of both levels' ``-cos``.
        teacher_augment: the teacher's own view (ProFeAT: weak, with a strong ``augment`` for the student); None:
            the teacher sees the student's input (DeACL).
    """

    name = "deacl"

    def __init__(
        self,
        teacher: nn.Module,
        threat: ThreatModel,
        beta: float = 2.0,
        steps: int = 5,
        step_size: float | None = None,
        augment: Augment | AnnealedAugment | None = None,
        seed: int = 0,
        center: bool = False,
        projector: nn.Module | None = None,
        teacher_augment: Augment | None = None,
    ) -> None:
        check_number("beta (--beta)", beta)
        self.teacher = teacher
        self.center = center
        self.threat = threat
        self.beta = beta
        self.projector = None if projector is None else frozen_projector(projector, teacher.feature_dim)
        self.attack = feature_pgd(steps, step_size, seed, None if projector is None else teacher.feature_dim)
        self.augment = augment or Augment("weak")
        self.teacher_augment = teacher_augment
        self.seed = seed
        self._ctx: Any = None

    def config(self) -> dict:
        annealed = self.augment.config() if isinstance(self.augment, AnnealedAugment) else None
        return {"method": self.name, "beta": self.beta, "steps": self.attack.steps, "center": self.center,
                "step_size": self.attack.resolve_step_size(self.threat), "threat": self.threat.to_dict(),
                "projector": self.projector is not None, "annealed_augment": annealed,
                "teacher_augment": getattr(self.teacher_augment, "strength", None)}  # fmt: skip

    def setup(self, ctx: TrainContext) -> None:
        """Teacher (and projector) to the device; this rank's generator; the loop's context (its global step)."""
        super().setup(ctx)
        self._ctx = ctx
        self.teacher.to(ctx.device)
        if self.projector is not None:
            self.projector.to(ctx.device)

    def progress(self) -> float:
        """Training progress in [0, 1]: the global step over the run's last step (0 outside the training loop)."""
        ctx = self._ctx
        total = getattr(ctx, "total_steps", 0) if ctx is not None else 0
        return min(ctx.step / (total - 1), 1.0) if total > 1 else 0.0

    def views(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The student's view and the teacher's (the same one unless ``teacher_augment``), from this generator."""
        g = self.generator(x.device)
        if isinstance(self.augment, AnnealedAugment):
            student_view = self.augment(x, g, self.progress())
        else:
            student_view = self.augment(x, g)
        return student_view, student_view if self.teacher_augment is None else self.teacher_augment(x, g)

    def adversarial(self, student: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        """The DeACL PGD target: ``x'`` in the eps-ball maximising ``-cos(f(x'), target)``."""
        self.attack.seed = self.attack_seed(x.device)
        return self.attack.perturb(unwrap(student), x, target, self.threat)

    def training_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Augmentation, teacher targets, feature PGD, then the DeACL loss (per level) on one student forward."""
        x, x_teacher = self.views(x)
        with torch.no_grad():
            target = self.teacher(x_teacher)
            if self.projector is not None:
                target = torch.cat([target, self.projector(target)], 1)
        view = unwrap(model) if self.projector is None else Projected(unwrap(model), self.projector)
        if self.center:
            with torch.no_grad():
                shift = view(x).mean(0, keepdim=True)
            x_adv = self.adversarial(Shifted(view, shift), x, target - target.mean(0, keepdim=True))
        else:
            x_adv = self.adversarial(view, x, target)
        f_clean, f_adv = model(torch.cat([x, x_adv])).chunk(2)
        if self.projector is None:
            return deacl_loss(f_clean, f_adv, target, self.beta, self.center)
        d = f_clean.shape[1]
        loss, stats = deacl_loss(f_clean, f_adv, target[:, :d], self.beta, self.center)
        proj_loss, proj = deacl_loss(self.projector(f_clean), self.projector(f_adv), target[:, d:], self.beta,
                                     self.center)  # fmt: skip
        loss = loss + proj_loss
        stats.update({"loss": loss.item(), "cos_teacher_proj": proj["cos_teacher"],
                      "cos_adv_clean_proj": proj["cos_adv_clean"]})  # fmt: skip
        return loss, stats


__all__ = ["DeACL", "LevelCosine", "Projected", "Shifted", "deacl_loss", "feature_pgd", "negative_cosine"]
