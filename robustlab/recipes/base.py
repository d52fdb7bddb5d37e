"""What every kind of training run shares: :class:`TrainingRunConfig`, a frozen config holding the data, the threat
model, the optimisation and the seed, whose :meth:`~TrainingRunConfig.fingerprint` is its own fields (what
``resume`` compares) and whose :meth:`~TrainingRunConfig.build` makes what :func:`robustlab.training.run_training`
trains."""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel
from robustlab.training.config import TrainConfig
from robustlab.training.run import TrainingSetup, training_fingerprint

# Fields that change neither the trained weights nor their meaning: a resumed run may differ in them.
RESUME_NEUTRAL = ("num_workers", "progress", "tensorboard", "trust_checkpoint", "export", "eval_n", "autoattack",
                  "eval_steps", "eval_restarts")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class TrainingRunConfig:
    """The fields of every training kind; a kind subclasses it with its own fields, defaults and :meth:`build`.

    ``threat`` is the threat model the run trains against (and is evaluated at); models and teachers are specs
    (``zoo:NAME``, a run folder, an architecture name, ``SPEC@FILE``) or modules, which the run copies.
    """

    kind: ClassVar[str] = ""
    epoch_keys: ClassVar[tuple[str, ...]] = ()  # the epoch stats a command line prints beside the loss

    dataset: str
    n: int | None = None  # train on the first n training items (None: all)
    data_root: str | None = None
    download: bool = True
    image_size: int | None = None  # imagefolder: resize and crop to this
    channels: int | None = None  # imagefolder: 1 or 3
    threat: ThreatModel | None = None
    epochs: int = 10
    batch_size: int = 128  # per rank
    optimizer: str = "sgd"
    lr: float = 0.1
    lr_schedule: str = "cyclic"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0  # weights, data order, noise, augmentations, attacks
    precision: str = "fp32"
    memory_format: str = "contiguous"
    max_steps_per_epoch: int | None = None
    num_workers: int = 0
    progress: bool = False
    tensorboard: bool = False
    checkpoint: str | None = None  # weights of the model (teacher, encoder) this run starts from: as SPEC@FILE
    trust_checkpoint: bool = False  # load model files with weights_only=False (only files you trust)
    export: str | None = None  # also save the final model's state dict here

    def fingerprint(self) -> dict[str, Any]:
        """The fields that change the result (every field but :data:`RESUME_NEUTRAL`), with the content digest of
        each model file named: what ``resume`` compares."""
        keys = {f.name: setting(getattr(self, f.name)) for f in fields(self) if f.name not in RESUME_NEUTRAL}
        return training_fingerprint(keys)

    def build(self, device: torch.device) -> TrainingSetup:
        """The model, method, data, callbacks and final evaluation of this run, on ``device``."""
        raise NotImplementedError

    def train_config(self, best_metric: str | None = None) -> TrainConfig:
        """The training loop's settings."""
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
            lr_schedule=self.lr_schedule, momentum=self.momentum, weight_decay=self.weight_decay, seed=self.seed,
            precision=self.precision, memory_format=self.memory_format, num_workers=self.num_workers,
            progress=self.progress, best_metric=best_metric, max_steps_per_epoch=self.max_steps_per_epoch,
            tensorboard=self.tensorboard,
        )  # fmt: skip

    def split(self, split: str, n: int | None) -> Dataset:
        """The first ``n`` items (None: all) of the dataset's ``split``."""
        from robustlab.data import first_n, load_dataset

        data = load_dataset(self.dataset, split, self.data_root, self.download, image_size=self.image_size,
                            channels=self.channels)  # fmt: skip
        return first_n(data, n)

    def needs_threat(self, why: str) -> ThreatModel:
        """The threat model, or one line saying that this run needs one."""
        if self.threat is None:
            raise RobustlabError(f"give a threat model (--eps): {self.kind} {why}")
        return self.threat

    def load(self, model: str | nn.Module, device: torch.device, **options: Any) -> tuple[nn.Module, str | None]:
        """A model spec loaded on ``device`` (a module: a copy of it) and its architecture where robustlab knows it."""
        from robustlab.models import load_model, model_arch

        if isinstance(model, nn.Module):
            return copy.deepcopy(model).to(device), None
        return load_model(model, self.checkpoint, self.trust_checkpoint, device, **options), model_arch(model)[0]


def setting(value: Any) -> Any:
    """A field's value as run.json records it: a threat model as its dict, a module as its class and weights'
    digest, tuples as lists."""
    from robustlab.models.digest import state_dict_digest

    if isinstance(value, ThreatModel):
        return value.to_dict()
    if isinstance(value, nn.Module):
        return {"module": type(value).__name__, "sha256": state_dict_digest(value.state_dict())}
    if isinstance(value, tuple):
        return [setting(v) for v in value]
    return value


def describe(model: str | nn.Module) -> str:
    """A model field for reports and banners: the spec, or the module's class."""
    return model if isinstance(model, str) else f"<{type(model).__name__}>"


__all__ = ["RESUME_NEUTRAL", "TrainingRunConfig", "describe", "setting"]
