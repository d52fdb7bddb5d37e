"""DeACL stage 2 (Zhang et al., ECCV 2022): a student encoder learns a frozen SSL teacher's features robustly.

Per sample ``L = -cos(f(x), T(x)) - beta * cos(f(x'), f(x))`` with ``x'`` from a feature-space PGD that
maximises ``-cos(f(x'), T(x))``. The PGD is the library's one gradient loop (:class:`GradientAttack`) with a
cosine loss on features, float feature targets and a criterion that never stops early. Labels are never used.

Options from later papers: ProFeAT's distillation through the teacher's frozen projector with a weakly augmented
teacher view (``projector``, ``teacher_augment``), DynACL's annealed augmentation (``augment=AnnealedAugment()``)
and a student wider than the teacher (``make_student(..., width_factor=2)``).
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks.base import GradientAttack
from robustlab.criteria import NeverSucceeds
from robustlab.distributed import unwrap
from robustlab.errors import RobustlabError
from robustlab.models import MLP, Normalize, SmallCNN, seeded_weights
from robustlab.ssl.augment import AnnealedAugment, Augment
from robustlab.ssl.encoder import Encoder, classifier_head
from robustlab.threat import ThreatModel
from robustlab.training.loop import TrainContext
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


STUDENT_INITS = ("teacher", "random")


def student_copy(teacher_net: nn.Module, init: str = "teacher", seed: int = 0) -> nn.Module:
    """A deep copy of ``teacher_net``, re-initialised when ``init="random"`` (every module's own
    ``reset_parameters``, drawn on the CPU from ``seed`` under a forked RNG: the global random state is untouched).
    """
    if init not in STUDENT_INITS:
        raise RobustlabError(f"unknown student initialisation {init!r}; choose one of: {', '.join(STUDENT_INITS)}")
    net = copy.deepcopy(teacher_net)
    if init == "random":
        device = next(net.parameters()).device
        net.cpu()
        with seeded_weights(seed):
            for module in net.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        net.to(device)
    return net


def arch_kwargs_of(net: nn.Module) -> dict[str, int]:
    """The width arguments that rebuild ``net`` (a SmallCNN's conv channels, an MLP's hidden units) from a model
    file; {} for other architectures."""
    inner = net.model if isinstance(net, Normalize) else net
    if isinstance(inner, SmallCNN):
        return {"width": inner.features[0].out_channels}
    if isinstance(inner, MLP):
        return {"hidden": inner.body[1].out_features}
    return {}


def widened(teacher_net: nn.Module, factor: int, seed: int = 0) -> nn.Module:
    """A fresh network of the teacher's architecture, ``factor`` times wider (SmallCNN: conv channels; MLP: hidden
    units, hence features), its input normalisation kept, drawn from ``seed`` (the global RNG untouched)."""
    inner = teacher_net.model if isinstance(teacher_net, Normalize) else teacher_net
    classes = classifier_head(teacher_net).out_features
    with seeded_weights(seed):
        if isinstance(inner, SmallCNN):
            conv, embed = inner.features[0], inner.embed[1]
            side = math.isqrt(embed.in_features // (2 * conv.out_channels))  # image_size // 4
            wide: nn.Module = SmallCNN(conv.in_channels, classes, conv.out_channels * factor, 4 * side)
        elif isinstance(inner, MLP):
            first = inner.body[1]  # in_features inputs: in_channels x 1 x 1 is the same first layer
            wide = MLP(first.in_features, classes, first.out_features * factor, image_size=1)
        else:
            raise RobustlabError(
                f"a wider student is built for the cnn and mlp architectures, not {type(inner).__name__}; use "
                "width factor 1"
            )
    if isinstance(teacher_net, Normalize):
        wide = Normalize(wide, teacher_net.mean.flatten().tolist(), teacher_net.std.flatten().tolist())
    return wide.to(next(teacher_net.parameters()).device)


def check_width(width_factor: int, init: str) -> None:
    """Refuse a width factor that is not a whole number >= 1, or > 1 with the teacher's weights as the start."""
    if isinstance(width_factor, bool) or not isinstance(width_factor, int) or width_factor < 1:
        raise RobustlabError(f"the student's width factor must be a whole number >= 1, got {width_factor!r}")
    if width_factor > 1 and init != "random":
        raise RobustlabError("a wider student cannot start as a copy of the teacher; use init random (--init random)")


class AlignedEncoder(Encoder):
    """A student encoder whose features are mapped linearly to the teacher's dimension where they differ (a wider
    student); the map is trained with the student and is not part of the saved classifier (``.net``)."""

    def __init__(self, net: nn.Module, teacher_dim: int, seed: int = 0) -> None:
        super().__init__(net)
        self.own_dim = self.feature_dim
        self.align: nn.Linear | None = None
        if teacher_dim != self.own_dim:
            with seeded_weights(seed):
                self.align = nn.Linear(self.own_dim, teacher_dim).to(next(net.parameters()).device)
            self.feature_dim = teacher_dim

    def forward(self, x: Tensor) -> Tensor:
        features = super().forward(x)
        return features if self.align is None else self.align(features)


def make_student(teacher_net: nn.Module, init: str = "teacher", seed: int = 0, width_factor: int = 1) -> Encoder:
    """A trainable encoder of the teacher's architecture: a copy of the teacher (``init="teacher"``, DeACL's
    choice) or freshly initialised (``"random"``, from ``seed``; the global RNG is left as it was);
    ``width_factor`` > 1 (random init only) makes it wider (:func:`widened`), with a linear map to the teacher's
    feature dimension where they differ (:class:`AlignedEncoder`).

    On a short budget the teacher's weights are a trap: the student stays close to its non-robust solution
    (Fashion-MNIST, 2-4 epochs: ~32 % PGD accuracy after SLF from the teacher, ~45 % from a random start).
    """
    check_width(width_factor, init)
    net = widened(teacher_net, width_factor, seed) if width_factor > 1 else student_copy(teacher_net, init, seed)
    student = AlignedEncoder(net, classifier_head(teacher_net).in_features, seed)
    for name, p in student.named_parameters():
        p.requires_grad_(not name.endswith(("fc.weight", "fc.bias")))
    return student.train()


def frozen_teacher(teacher_net: nn.Module) -> Encoder:
    """The teacher's encoder, frozen and in eval mode."""
    teacher = Encoder(teacher_net).eval()
    teacher.requires_grad_(False)
    return teacher


def frozen_projector(projector: nn.Module, feature_dim: int) -> nn.Module:
    """A frozen copy of the teacher's SSL projector in eval mode (its BatchNorm uses the teacher's statistics, so
    it is one fixed function for teacher and student); refused where it does not take ``feature_dim`` features."""
    first = next((m for m in projector.modules() if isinstance(m, nn.Linear)), None)
    if first is not None and first.in_features != feature_dim:
        raise RobustlabError(
            f"the projector takes {first.in_features} features but the teacher gives {feature_dim}; give the "
            "projector of this teacher's SSL run"
        )
    frozen = copy.deepcopy(projector).eval()
    frozen.requires_grad_(False)
    return frozen


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
        teacher: the frozen teacher encoder (see :func:`frozen_teacher`).
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


__all__ = [
    "STUDENT_INITS",
    "AlignedEncoder",
    "DeACL",
    "LevelCosine",
    "Projected",
    "Shifted",
    "arch_kwargs_of",
    "check_width",
    "deacl_loss",
    "feature_pgd",
    "frozen_projector",
    "frozen_teacher",
    "make_student",
    "negative_cosine",
    "student_copy",
    "widened",
]
