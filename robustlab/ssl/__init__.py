"""Self-supervised robust training, one idea per file (solo-learn's shape): the encoder view of a classifier and a
projector (``encoder``), augmentations (``augment``), contrastive losses (``losses``), the contrastive base
(``base``) with SimCLR (``simclr``) and SimCo (``simco``), the kNN monitor (``knn``), DeACL's loss, feature PGD and
method (``deacl``), the student encoder and the frozen teacher and projector it learns from (``student``),
pseudo-supervised AT (``pseudo``), TRADES (``trades``) and the fine-tuning protocols SLF/ALF/AFF (``finetune``).
Every method trains through the one loop, :func:`robustlab.training.train`."""

from robustlab.registry import Registry
from robustlab.ssl.augment import AUGMENT_STRENGTHS, AnnealedAugment, Augment
from robustlab.ssl.base import ContrastiveMethod
from robustlab.ssl.deacl import DeACL, deacl_loss, feature_pgd, negative_cosine
from robustlab.ssl.encoder import (
    Encoder,
    Projector,
    SSLModel,
    classifier_head,
    load_projector,
    replace_head,
    save_classifier,
)
from robustlab.ssl.finetune import PROTOCOLS, FineTune, prepare_classifier
from robustlab.ssl.knn import KNNMonitor, knn_accuracy
from robustlab.ssl.losses import info_nce, simco_loss
from robustlab.ssl.pseudo import PSEUDO_LOSSES, TARGETS, PseudoAT, PseudoLabeler, kmeans_labeler, make_pseudo_student
from robustlab.ssl.simclr import SimCLR
from robustlab.ssl.simco import SimCo
from robustlab.ssl.student import (
    STUDENT_INITS,
    AlignedEncoder,
    arch_kwargs_of,
    check_width,
    frozen_projector,
    frozen_teacher,
    make_student,
    student_copy,
    widened,
)

SSL_METHODS: Registry[type[ContrastiveMethod]] = Registry("SSL method")
SSL_METHODS.register("simclr", SimCLR)
SSL_METHODS.register("simco", SimCo)


def make_ssl_method(name: str, **kwargs: object) -> ContrastiveMethod:
    """A contrastive method by name (``simclr``, ``simco``) with its options (checked against its constructor)."""
    SSL_METHODS.check_options(name, kwargs)
    return SSL_METHODS.get(name)(**kwargs)  # type: ignore[arg-type]


__all__ = [
    "AUGMENT_STRENGTHS",
    "PROTOCOLS",
    "PSEUDO_LOSSES",
    "SSL_METHODS",
    "STUDENT_INITS",
    "TARGETS",
    "AlignedEncoder",
    "AnnealedAugment",
    "Augment",
    "ContrastiveMethod",
    "DeACL",
    "Encoder",
    "FineTune",
    "KNNMonitor",
    "Projector",
    "PseudoAT",
    "PseudoLabeler",
    "SSLModel",
    "SimCLR",
    "SimCo",
    "arch_kwargs_of",
    "check_width",
    "classifier_head",
    "deacl_loss",
    "feature_pgd",
    "frozen_projector",
    "frozen_teacher",
    "info_nce",
    "kmeans_labeler",
    "knn_accuracy",
    "load_projector",
    "make_pseudo_student",
    "make_ssl_method",
    "make_student",
    "negative_cosine",
    "prepare_classifier",
    "replace_head",
    "save_classifier",
    "simco_loss",
    "student_copy",
    "widened",
]
