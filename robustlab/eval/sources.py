"""What an evaluation run evaluates: a model and a dataset given by name (loaded by the run, with a fingerprint for
``--resume``) or as objects, and the one-batch probe that refuses a model that does not fit the data before work."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from robustlab.attacks.protocol import check_labels, model_logits
from robustlab.data import first_n, load_dataset, num_classes_of
from robustlab.errors import RobustlabError
from robustlab.runs import file_digest

Data = Dataset | tuple[Tensor, Tensor]


@dataclass(frozen=True)
class ModelSource:
    """A model by spec (``zoo:NAME``, ``module:factory`` + checkpoint, a file), loaded by the run."""

    spec: str
    checkpoint: str | None = None
    trust_checkpoint: bool = False
    num_classes: int | None = None  # outputs of a torchvision:/module:factory model
    mean: tuple[float, ...] | None = None  # normalisation put in front of it (torchvision: ImageNet's by default)
    std: tuple[float, ...] | None = None

    def load(self, device: torch.device | str = "cpu") -> nn.Module:
        from robustlab.models import load_model

        return load_model(self.spec, self.checkpoint, self.trust_checkpoint, device, self.num_classes,
                          mean=self.mean, std=self.std)  # fmt: skip

    def fingerprint(self) -> dict[str, Any]:
        """The spec and checkpoint, with the content of model files (a file changed under the same name is
        another model)."""
        from robustlab.models import split_weights

        spec, checkpoint = split_weights(self.spec, self.checkpoint)  # SPEC@FILE: FILE is the checkpoint
        keys: dict[str, Any] = {"model": spec, "checkpoint": checkpoint}
        keys.update({k: getattr(self, k) for k in ("num_classes", "mean", "std") if getattr(self, k) is not None})
        for name in ("model", "checkpoint"):
            if keys[name] and Path(keys[name]).is_file():
                keys[f"{name}_sha256"] = file_digest(keys[name])
        return keys


@dataclass(frozen=True)
class DataSource:
    """A dataset by name (``fashion-mnist``, ``imagefolder:PATH``, ...), split and size, loaded by the run."""

    name: str
    split: str = "test"
    n: int | None = None
    root: str | None = None
    download: bool = True
    image_size: int | None = None  # imagefolder: resize and crop to this (default 256 / 224)
    channels: int | None = None  # imagefolder: 1 (grey) or 3 (RGB, the default)

    def load(self) -> Dataset:
        data = load_dataset(self.name, self.split, self.root, self.download, image_size=self.image_size,
                            channels=self.channels)  # fmt: skip
        return first_n(data, self.n)

    def fingerprint(self) -> dict[str, Any]:
        shape = {k: getattr(self, k) for k in ("image_size", "channels") if getattr(self, k) is not None}
        return {"dataset": self.name, "split": self.split, "n": self.n, **shape}


def settings(config: Any, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """A config dataclass's fields as a dict, shallow (attack objects are not deep-copied as ``asdict`` would)."""
    return {f.name: getattr(config, f.name) for f in fields(config) if f.name not in exclude}


def model_fingerprint(model: nn.Module | str | ModelSource) -> dict[str, Any]:
    """A model's part of a run's fingerprint, without loading a spec: the spec and its files' content, or a
    module's class and weights."""
    if isinstance(model, (str, ModelSource)):
        return (ModelSource(model) if isinstance(model, str) else model).fingerprint()
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return {"model": type(model).__name__, "model_state_sha256": digest.hexdigest()}


def data_fingerprint(data: Data | str | DataSource) -> dict[str, Any]:
    """Data's part of a run's fingerprint, without loading a name: its name, split and size, or an object's size
    and first items."""
    if isinstance(data, (str, DataSource)):
        return (DataSource(data) if isinstance(data, str) else data).fingerprint()
    x, y = first_batch(data, 64)
    digest = hashlib.sha256(x.cpu().numpy().tobytes() + y.cpu().numpy().tobytes()).hexdigest()
    n = len(data[1]) if isinstance(data, tuple) else len(data)  # type: ignore[arg-type]
    return {"dataset": type(data).__name__, "n": n, "first_items_sha256": digest}


def attack_keys(attacks: Mapping[str, Any], as_specs: bool) -> list[str] | dict[str, dict]:
    """Attacks' part of a run's fingerprint: their specs (``as_specs``; the defaults they are built with are
    settings of their own), or each attack object's configuration."""
    return list(attacks) if as_specs else {name: getattr(a, "config", dict)() for name, a in attacks.items()}


def resolve_model(model: nn.Module | str | ModelSource, device: torch.device | str) -> tuple[nn.Module, str, dict]:
    """``(module, name for reports, fingerprint)`` of a model given as a module, a spec or a :class:`ModelSource`."""
    if isinstance(model, str):
        model = ModelSource(model)
    if isinstance(model, ModelSource):
        return model.load(device), model.spec, model.fingerprint()
    return model, type(model).__name__, model_fingerprint(model)


def resolve_data(data: Data | str | DataSource) -> tuple[Data, str, str, dict]:
    """``(dataset, name, split, fingerprint)`` of data given as a dataset, an ``(x, y)`` pair, a name or a
    :class:`DataSource`; objects are fingerprinted by their size and first items."""
    if isinstance(data, str):
        data = DataSource(data)
    if isinstance(data, DataSource):
        return data.load(), data.name, data.split, data.fingerprint()
    return data, type(data).__name__, "-", data_fingerprint(data)


def first_batch(data: Data, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` items (fewer if the data is smaller) as two tensors."""
    if isinstance(data, tuple):
        return data[0][:n], data[1][:n]
    if len(data) == 0:  # type: ignore[arg-type]
        raise RobustlabError("nothing to evaluate: the dataset is empty")
    x, y = next(iter(DataLoader(data, batch_size=min(n, len(data)), shuffle=False)))  # type: ignore[arg-type]
    return x, torch.as_tensor(y)


def probe(model: nn.Module, data: Data, device: torch.device | str, ks: Sequence[int] | None = None) -> int:
    """Run the model on two samples before any long work; returns the number of classes, or one error line: a
    model whose input does not fit the data, labels outside its classes, top-k values it cannot have."""
    x, y = first_batch(data, 2)
    try:
        with torch.no_grad():
            logits = model_logits(model, x.to(device))
    except RobustlabError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise RobustlabError(
            f"the model does not fit this dataset's inputs of shape {tuple(x.shape[1:])} ({first}); choose a model "
            "built for this dataset"
        ) from None
    num_classes = logits.shape[1]
    check_labels(y.to(logits.device), num_classes)
    classes = num_classes_of(data) if not isinstance(data, tuple) else None
    if classes is not None and classes != num_classes:  # e.g. 50 k-means cluster outputs judged against 10 labels
        raise RobustlabError(
            f"the model has {num_classes} outputs but the dataset {classes} classes, so its predictions cannot be "
            "judged against the labels; use a classifier with one output per class (e.g. robustlab finetune)"
        )
    bad = [k for k in ks or [] if not 1 <= k < num_classes]
    if bad:
        raise RobustlabError(
            f"top-k values {bad} impossible for a {num_classes}-class model; k must be in 1..{num_classes - 1}"
        )
    return num_classes


__all__ = [
    "DataSource",
    "ModelSource",
    "attack_keys",
    "data_fingerprint",
    "first_batch",
    "model_fingerprint",
    "probe",
    "resolve_data",
    "resolve_model",
    "settings",
]
