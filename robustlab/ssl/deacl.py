"""DeACL stage 2 (Zhang et al., ECCV 2022): a student encoder learns a frozen SSL teacher's features robustly.

Per sample ``L = -cos(f(x), T(x)) - beta * cos(f(x'), f(x))`` with ``x'`` from a feature-space PGD that
maximises ``-cos(f(x'), T(x))``. The PGD is the library's one gradient loop (:class:`GradientAttack`) with a
cosine loss on features, float feature targets and a criterion that never stops early. Labels are never used.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks.base import GradientAttack
from robustlab.criteria import NeverSucceeds
from robustlab.distributed import unwrap
from robustlab.errors import RobustlabError
from robustlab.models import seeded_weights
from robustlab.ssl.augment import Augment
from robustlab.ssl.encoder import Encoder
from robustlab.threat import ThreatModel
from robustlab.training.loop import TrainContext
from robustlab.training.method import Method, check_number

log = logging.getLogger(__name__)


def negative_cosine(features: Tensor, target: Tensor) -> Tensor:
    """Per-sample ``-cos(features, target)``: the feature-space attack loss (higher = further from target)."""
    return -F.cosine_similarity(features, target, dim=1)


def feature_pgd(steps: int = 5, step_size: float | None = None, seed: int = 0) -> GradientAttack:
    """PGD in feature space: random start, ``steps`` signed steps (default size eps/4) on ``-cos(f(x'), t)``.

    Call it as ``attack(encoder, x, target_features, threat)``.
    """
    return GradientAttack(
        steps=steps, step_size=step_size, loss=negative_cosine, random_start=True, criterion=NeverSucceeds(), seed=seed
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


def make_student(teacher_net: nn.Module, init: str = "teacher", seed: int = 0) -> Encoder:
    """A trainable encoder of the teacher's architecture: a copy of the teacher (``init="teacher"``, DeACL's
    choice) or freshly initialised (``"random"``, from ``seed``; the global RNG is left as it was).

    On a short budget the teacher's weights are a trap: the student stays close to its non-robust solution
    (Fashion-MNIST, 2-4 epochs: ~32 % PGD accuracy after SLF from the teacher, ~45 % from a random start).
    """
    student = Encoder(student_copy(teacher_net, init, seed))
    for name, p in student.named_parameters():
        p.requires_grad_(not name.endswith(("fc.weight", "fc.bias")))
    return student.train()


def frozen_teacher(teacher_net: nn.Module) -> Encoder:
    """The teacher's encoder, frozen and in eval mode."""
    teacher = Encoder(teacher_net).eval()
    teacher.requires_grad_(False)
    return teacher


class Shifted(nn.Module):
    """``encoder(x) - shift``: the feature PGD's view of a centred student."""

    def __init__(self, encoder: nn.Module, shift: Tensor) -> None:
        super().__init__()
        self.encoder, self.shift = encoder, shift

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x) - self.shift


class DeACL(Method):
    """DeACL as a training :class:`Method`: ``model`` is the student :class:`Encoder`; labels are ignored.

    Args:
        teacher: the frozen teacher encoder (see :func:`frozen_teacher`).
        threat: the threat model of the inner feature PGD (the paper: Linf 8/255 on CIFAR-10).
        beta: weight of the adversarial consistency term (paper: 2).
        steps, step_size: the inner PGD (paper: 5 steps of eps/4, random start).
        augment: stage-2 augmentation (paper: weak, crop + flip).
        center: take every cosine (loss and PGD target) between batch-centred features. Off by default (the
            paper's loss). Post-ReLU features without a normalisation layer (the small CNN's) share a large
            common direction; the plain cosine then lets the student grow that shared component, which
            raises ``cos(f(x'), f(x))`` for any x' without making the class-bearing part robust. Centring
            removes that shortcut (Fashion-MNIST, random student: +7 points of SLF PGD-10 accuracy; the README's
            SSL benchmark). Costs one extra no-grad student forward per step. Under DDP each rank centres with
            its own batch's mean.
    """

    name = "deacl"

    def __init__(
        self,
        teacher: nn.Module,
        threat: ThreatModel,
        beta: float = 2.0,
        steps: int = 5,
        step_size: float | None = None,
        augment: Augment | None = None,
        seed: int = 0,
        center: bool = False,
    ) -> None:
        check_number("beta (--beta)", beta)
        self.teacher = teacher
        self.center = center
        self.threat = threat
        self.beta = beta
        self.attack = feature_pgd(steps, step_size, seed)
        self.augment = augment or Augment("weak")
        self.seed = seed

    def config(self) -> dict:
        return {"method": self.name, "beta": self.beta, "steps": self.attack.steps, "center": self.center,
                "step_size": self.attack.resolve_step_size(self.threat), "threat": self.threat.to_dict()}  # fmt: skip

    def setup(self, ctx: TrainContext) -> None:
        """Move the teacher to the training device; seed this rank's generator."""
        super().setup(ctx)
        self.teacher.to(ctx.device)

    def adversarial(self, student: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        """The DeACL PGD target: ``x'`` in the eps-ball maximising ``-cos(f(x'), target)``."""
        self.attack.seed = self.attack_seed(x.device)
        return self.attack.perturb(unwrap(student), x, target, self.threat)

    def training_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Weak augmentation, teacher features, feature PGD, then the DeACL loss on one student forward."""
        x = self.augment(x, self.generator(x.device))
        with torch.no_grad():
            t_clean = self.teacher(x)
        if self.center:
            with torch.no_grad():
                shift = unwrap(model)(x).mean(0, keepdim=True)
            x_adv = self.adversarial(Shifted(unwrap(model), shift), x, t_clean - t_clean.mean(0, keepdim=True))
        else:
            x_adv = self.adversarial(model, x, t_clean)
        f_clean, f_adv = model(torch.cat([x, x_adv])).chunk(2)
        return deacl_loss(f_clean, f_adv, t_clean, self.beta, self.center)


__all__ = [
    "STUDENT_INITS",
    "DeACL",
    "Shifted",
    "deacl_loss",
    "feature_pgd",
    "frozen_teacher",
    "make_student",
    "negative_cosine",
    "student_copy",
]
