"""Models: the embedded zoo, standard architectures, the Normalize wrapper and one loader."""

from robustlab.models.arch import ARCHITECTURES, MLP, SmallCNN, preact_resnet18, resnet18, seeded_weights
from robustlab.models.build import build_model, build_spec
from robustlab.models.checkpoint import load_checkpoint, load_weights, model_file_header
from robustlab.models.loader import load_model, model_arch, split_weights, zoo_index
from robustlab.models.model_file import MODEL_FORMAT, save_model
from robustlab.models.normalize import DATASET_STATS, Normalize

__all__ = [
    "ARCHITECTURES",
    "DATASET_STATS",
    "MODEL_FORMAT",
    "MLP",
    "Normalize",
    "SmallCNN",
    "build_model",
    "build_spec",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "split_weights",
    "model_arch",
    "model_file_header",
    "preact_resnet18",
    "resnet18",
    "save_model",
    "seeded_weights",
    "zoo_index",
]
