"""The DeACL-family student and teacher (Zhang et al., ECCV 2022, stage 2): a trainable student encoder built from the
teacher's network (a copy, a fresh initialisation, or a wider network with a linear map to the teacher's features),
the frozen teacher encoder and the teacher's frozen SSL projector (ProFeAT). :mod:`robustlab.ssl.deacl` and
:mod:`robustlab.ssl.pseudo` train such students.
"""

from __future__ import annotations

import copy
import math

from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.models import MLP, Normalize, SmallCNN, seeded_weights
from robustlab.ssl.encoder import Encoder, classifier_head

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


__all__ = [
    "STUDENT_INITS",
    "AlignedEncoder",
    "arch_kwargs_of",
    "check_width",
    "frozen_projector",
    "frozen_teacher",
    "make_student",
    "student_copy",
    "widened",
]
