"""Pseudo-supervised adversarial training against a frozen teacher's targets (DeACL's stage 2, generalised).

Targets:
- ``embedding``: the teacher's features; the student encoder is trained on feature-space PGD examples with
  a cosine loss (``ce``: ``-cos(f(x'), T(x))``) or DeACL's decoupled loss (``trades``).
- ``kmeans``: hard pseudo-labels, the teacher's k-means cluster of each input (no labels anywhere).
- ``linear``: hard pseudo-labels, the argmax of the teacher's own linear head (self-training, Carmon et al.
  2019: the head may have been trained on labels).
Hard pseudo-labels train a classifier (student encoder + a fresh head) with PGD-AT (``ce``) or TRADES.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks.presets import PGD
from robustlab.distributed import unwrap
from robustlab.errors import RobustlabError
from robustlab.ssl.augment import Augment
from robustlab.ssl.deacl import deacl_loss, feature_pgd
from robustlab.ssl.encoder import classifier_head, replace_head
from robustlab.ssl.knn import embed
from robustlab.ssl.student import frozen_teacher, make_student, student_copy
from robustlab.ssl.trades import trades_attack, trades_loss
from robustlab.threat import ThreatModel
from robustlab.training.context import TrainContext
from robustlab.training.method import Method, check_number

log = logging.getLogger(__name__)

TARGETS = ("embedding", "kmeans", "linear")
PSEUDO_LOSSES = ("ce", "trades")  # the pseudo-AT objectives (not attack losses)


def kmeans(features: Tensor, k: int, iters: int = 30, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Spherical k-means (k-means++ start) on L2-normalised ``features``: ``(centroids (k, D), assignments (N,))``."""
    if not 2 <= k <= features.shape[0]:
        raise RobustlabError(f"k-means needs 2 <= k <= number of samples ({features.shape[0]}), got k={k}")
    z = F.normalize(features, dim=1)
    g = torch.Generator(device=z.device).manual_seed(seed)
    first = int(torch.randint(z.shape[0], (1,), generator=g, device=z.device))
    centroids = [z[first]]
    for _ in range(1, k):  # k-means++: the next centre far (in cosine distance) from those chosen
        dist = (1 - z @ torch.stack(centroids).T).min(dim=1).values.clamp_min(0)
        probs = dist.pow(2) / dist.pow(2).sum().clamp_min(1e-12)
        centroids.append(z[int(torch.multinomial(probs, 1, generator=g))])
    c = torch.stack(centroids)
    for _ in range(iters):
        assign = (z @ c.T).argmax(dim=1)
        sums = torch.zeros_like(c).index_add_(0, assign, z)
        counts = torch.bincount(assign, minlength=k)
        c = torch.where(counts[:, None] > 0, F.normalize(sums, dim=1), c)  # empty clusters keep their centre
    return c, (z @ c.T).argmax(dim=1)


class PseudoLabeler(nn.Module):
    """Hard pseudo-labels from a frozen teacher: its nearest k-means centroid, or its linear head's argmax."""

    def __init__(self, teacher_net: nn.Module, centroids: Tensor | None = None) -> None:
        super().__init__()
        self.teacher = frozen_teacher(teacher_net) if centroids is not None else teacher_net.eval()
        self.teacher.requires_grad_(False)
        self.register_buffer("centroids", centroids if centroids is not None else torch.empty(0))

    @property
    def num_classes(self) -> int:
        if self.centroids.numel():
            return self.centroids.shape[0]
        return classifier_head(self.teacher).out_features

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        out = self.teacher(x)
        if self.centroids.numel():
            return (F.normalize(out, dim=1) @ self.centroids.T).argmax(dim=1)
        return out.argmax(dim=1)


def kmeans_labeler(teacher_net: nn.Module, images: Tensor, k: int = 10, seed: int = 0) -> PseudoLabeler:
    """Fit k-means on the teacher's features of ``images`` (unlabelled) and label by nearest centroid."""
    centroids, _ = kmeans(embed(frozen_teacher(teacher_net), images), k, seed=seed)
    return PseudoLabeler(teacher_net, centroids)


class PseudoAT(Method):
    """Pseudo-supervised AT as a training :class:`Method`; labels ``y`` are ignored.

    ``model`` is a student :class:`Encoder` for ``targets="embedding"``, else a classifier whose head has
    ``labeler.num_classes`` outputs (see :func:`make_pseudo_student`).
    """

    def __init__(
        self,
        targets: str,
        threat: ThreatModel,
        teacher_net: nn.Module | None = None,
        labeler: PseudoLabeler | None = None,
        loss: str = "ce",
        beta: float | None = None,
        steps: int = 5,
        step_size: float | None = None,
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        if targets not in TARGETS:
            raise RobustlabError(f"unknown pseudo-targets {targets!r}; choose one of: {', '.join(TARGETS)}")
        if loss not in PSEUDO_LOSSES:
            raise RobustlabError(f"unknown pseudo-AT loss {loss!r}; choose ce or trades")
        if targets == "embedding" and teacher_net is None:
            raise RobustlabError("embedding targets need the teacher")
        if targets != "embedding" and labeler is None:
            raise RobustlabError(f"{targets} targets need a PseudoLabeler (kmeans_labeler or PseudoLabeler(teacher))")
        check_number("beta (--beta)", beta)
        self.name = f"pseudo-at-{targets}-{loss}"
        self.targets, self.loss, self.threat = targets, loss, threat
        self.beta = beta if beta is not None else (2.0 if targets == "embedding" else 6.0)
        self.teacher = frozen_teacher(teacher_net) if targets == "embedding" else None
        self.labeler = labeler
        if targets == "embedding":
            self.attack = feature_pgd(steps, step_size, seed)
        else:
            self.attack = (
                trades_attack(steps, step_size, seed) if loss == "trades" else PGD(steps, step_size, seed=seed)
            )
        self.augment = augment or Augment("weak")
        self.seed = seed

    def config(self) -> dict:
        return {"method": self.name, "targets": self.targets, "loss": self.loss, "beta": self.beta,
                "threat": self.threat.to_dict()}  # fmt: skip

    def setup(self, ctx: TrainContext) -> None:
        """Move the teacher / labeler to the training device; seed this rank's generator."""
        super().setup(ctx)
        for frozen in (self.teacher, self.labeler):
            if frozen is not None:
                frozen.to(ctx.device)

    def training_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Augment, ask the teacher for targets, attack the student, and train it on the targets."""
        x = self.augment(x, self.generator(x.device))
        self.attack.seed = self.attack_seed(x.device)
        if self.teacher is not None:
            with torch.no_grad():
                t = self.teacher(x)
            x_adv = self.attack.perturb(unwrap(model), x, t, self.threat)
            if self.loss == "trades":
                f_clean, f_adv = model(torch.cat([x, x_adv])).chunk(2)
                return deacl_loss(f_clean, f_adv, t, self.beta)
            cos = F.cosine_similarity(model(x_adv), t, dim=1).mean()
            return -cos, {"loss": -cos.item(), "cos_teacher_adv": cos.item()}
        pseudo = self.labeler(x)
        if self.loss == "trades":
            loss, stats = trades_loss(model, x, pseudo, self.threat, self.beta, self.attack)
        else:
            x_adv = self.attack.perturb(unwrap(model), x, pseudo, self.threat)
            logits = model(x_adv)
            loss = F.cross_entropy(logits, pseudo)
            stats = {"loss": loss.item(), "adv_accuracy": (logits.argmax(1) == pseudo).float().mean().item()}
        if self.targets == "linear":  # for the log only: how often the pseudo-label is the true label
            stats["pseudo_label_agreement"] = (pseudo == y.to(pseudo.device)).float().mean().item()
        return loss, stats


def make_pseudo_student(
    teacher_net: nn.Module, targets: str, num_classes: int | None = None, init: str = "teacher", seed: int = 0
) -> nn.Module:
    """The student: its encoder (embedding targets) or a classifier whose head has ``num_classes`` outputs (hard
    pseudo-labels), a copy of the teacher (``init="teacher"``) or of its architecture re-initialised from
    ``seed`` (``"random"``; as for DeACL, better on short budgets: see :func:`make_student`)."""
    if targets == "embedding":
        return make_student(teacher_net, init, seed)
    net = student_copy(teacher_net, init, seed).train()
    net.requires_grad_(True)
    if num_classes is not None:
        replace_head(net, num_classes, seed)
    return net


__all__ = ["PSEUDO_LOSSES", "TARGETS", "PseudoAT", "PseudoLabeler", "kmeans", "kmeans_labeler", "make_pseudo_student"]
