"""Self-supervised robust training, one idea per file (solo-learn's shape): the encoder view of a classifier and a
projector (``encoder``), augmentations (``augment``), contrastive losses (``losses``), the contrastive base
(``base``) with SimCLR (``simclr``) and SimCo (``simco``), the kNN monitor (``knn``), DeACL (``deacl``),
pseudo-supervised AT (``pseudo``), TRADES (``trades``) and the fine-tuning protocols SLF/ALF/AFF (``finetune``).
Every method trains through the one loop, :func:`robustlab.training.train`."""

from robustlab.errors import RobustlabError
from robustlab.ssl.augment import AUGMENT_STRENGTHS, Augment
from robustlab.ssl.base import ContrastiveMethod
from robustlab.ssl.deacl import STUDENT_INITS, DeACL, frozen_teacher, make_student
from robustlab.ssl.encoder import Encoder, Projector, SSLModel, classifier_head, replace_head, save_classifier
from robustlab.ssl.finetune import PROTOCOLS, FineTune, prepare_classifier
from robustlab.ssl.knn import KNNMonitor, knn_accuracy
from robustlab.ssl.losses import info_nce, simco_loss
from robustlab.ssl.pseudo import PSEUDO_LOSSES, TARGETS, PseudoAT, PseudoLabeler, kmeans_labeler, make_pseudo_student
from robustlab.ssl.simclr import SimCLR
from robustlab.ssl.simco import SimCo

SSL_METHODS: dict[str, type[ContrastiveMethod]] = {"simclr": SimCLR, "simco": SimCo}


def make_ssl_method(name: str, **kwargs: object) -> ContrastiveMethod:
    """A contrastive method by name (``simclr``, ``simco``) with its options."""
    if name not in SSL_METHODS:
        raise RobustlabError(f"unknown SSL method {name!r}; choose one of: {', '.join(SSL_METHODS)}")
    return SSL_METHODS[name](**kwargs)  # type: ignore[arg-type]


__all__ = [
    "AUGMENT_STRENGTHS",
    "PROTOCOLS",
    "PSEUDO_LOSSES",
    "SSL_METHODS",
    "STUDENT_INITS",
    "TARGETS",
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
    "classifier_head",
    "frozen_teacher",
    "info_nce",
    "kmeans_labeler",
    "knn_accuracy",
    "make_pseudo_student",
    "make_ssl_method",
    "make_student",
    "prepare_classifier",
    "replace_head",
    "save_classifier",
    "simco_loss",
]
