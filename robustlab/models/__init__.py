"""Models: the embedded zoo, standard architectures, the Normalize wrapper and one loader."""

from robustlab.models.arch import ARCHITECTURES, MLP, SmallCNN, preact_resnet18, resnet18, seeded_weights
from robustlab.models.loader import build_model, load_checkpoint, load_model, load_weights, model_arch, zoo_index
from robustlab.models.normalize import DATASET_STATS, Normalize

__all__ = [
    "ARCHITECTURES",
    "DATASET_STATS",
    "MLP",
    "Normalize",
    "SmallCNN",
    "build_model",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "model_arch",
    "preact_resnet18",
    "resnet18",
    "seeded_weights",
    "zoo_index",
]
