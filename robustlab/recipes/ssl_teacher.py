"""Stage 1 of self-supervised robustness (``robustlab ssl``): a contrastive teacher encoder (SimCLR or SimCo) with a
kNN monitor; the run's model.pt is the encoder's classifier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from robustlab.recipes.base import TrainingRunConfig, describe
from robustlab.training.run import TrainingSetup


@dataclass(frozen=True, kw_only=True)
class SSLConfig(TrainingRunConfig):
    """``robustlab ssl``: ``model``'s encoder and a projector trained with ``method`` (labels unused)."""

    kind: ClassVar[str] = "ssl"
    epoch_keys: ClassVar[tuple[str, ...]] = ("positive_cos", "knn_accuracy")

    model: str | nn.Module
    method: str = "simclr"  # "simclr" | "simco"
    temperature: float = 0.2  # InfoNCE / SimCo's tau_alpha
    tau_beta: float = 1.0  # SimCo's second temperature
    proj_hidden: int = 512
    proj_dim: int = 128
    crop_scale: tuple[float, float] | None = None  # the views' random-resized-crop area (None: the augmentation's)
    knn_n: int = 2000  # labelled items of the kNN monitor (0: off)
    epochs: int = 20
    batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    weight_decay: float = 1e-5

    def build(self, device: torch.device) -> TrainingSetup:
        """Encoder + projector, the contrastive method and the kNN monitor."""
        from robustlab.models import seeded_weights
        from robustlab.ssl import Augment, KNNMonitor, SSLModel, make_ssl_method

        train_set = self.split("train", self.n)
        net, arch = self.load(self.model, device, dataset=self.dataset, seed=self.seed)
        with seeded_weights(self.seed):
            model = SSLModel(net, self.proj_hidden, self.proj_dim).to(device)
        options = {"tau_beta": self.tau_beta} if self.method == "simco" else {}
        if self.crop_scale is not None:
            options["augment"] = Augment("strong", tuple(self.crop_scale))
        method = make_ssl_method(self.method, temperature=self.temperature, seed=self.seed, **options)
        callbacks = []
        if self.knn_n > 0:
            full_train, test = self.split("train", None), self.split("test", None)  # the same image size
            callbacks.append(KNNMonitor.from_datasets(full_train, test, self.knn_n))  # more than exist: refused
        name = describe(self.model)
        return TrainingSetup(
            model, method, train_set, self.train_config(), callbacks, saved=net, summary_keys=("knn_accuracy",),
            method_info={"projector": [self.proj_hidden, self.proj_dim], "model": name, "arch": arch},
            report={"dataset": self.dataset},
            model_file={"arch": arch, "dataset": self.dataset, "stage": "ssl", "method": self.method},
            banner=f"{self.method} on {self.dataset} ({len(train_set)} images, labels unused), model {name}",
        )  # fmt: skip


__all__ = ["SSLConfig"]
