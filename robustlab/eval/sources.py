"""What an evaluation run evaluates: a model and a dataset given by name (loaded by the run, with a fingerprint for
``--resume``) or as objects, and the one-batch probe that refuses a model that does not fit the data before work."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from robustlab.attacks.protocol import check_labels, model_logits
from robustlab.data import ImageTensorDataset, canonical_name, first_n, load_dataset, num_classes_of
from robustlab.errors import RobustlabError
from robustlab.models.digest import state_dict_digest, tensor_bytes
from robustlab.models.normalize import Normalize
from robustlab.runs import file_digest

Data = Dataset | tuple[Tensor, Tensor]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """A model by spec (``zoo:NAME``, ``module:factory`` + checkpoint, a file), loaded by the run."""

    spec: str
    checkpoint: str | None = None
    trust_checkpoint: bool = False
    num_classes: int | None = None  # outputs of a torchvision:/module:factory model
    mean: tuple[float, ...] | None = None  # normalisation put in front of it (torchvision: ImageNet's by default)
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None) or (self.mean and len(self.mean) != len(self.std or ())):
            raise RobustlabError("give --mean and --std together, one value per channel each")

    def head_warning(self) -> str | None:
        """A warning when the spec is a robustlab ssl or deacl encoder: labels never trained its linear head, so its
        accuracy is chance, not robustness; None otherwise."""
        from robustlab.models import model_file_header

        stage = ((model_file_header(self.spec) or {}) if self.checkpoint is None else {}).get("stage")
        if stage not in ("ssl", "deacl"):
            return None
        return (f"{self.spec} is a robustlab {stage} encoder whose linear head never saw a label; fine-tune it first: "
                f"robustlab finetune --encoder {self.spec} --protocol slf")  # fmt: skip

    def load(self, device: torch.device | str = "cpu") -> nn.Module:
        """The model on ``device``; a bare architecture name is warned about (its weights are random), as
        ``torchvision:``/``module:factory`` specs without weights are."""
        from robustlab.models import ARCHITECTURES, load_model

        if self.spec in ARCHITECTURES and self.checkpoint is None and not os.path.exists(self.spec):
            log.warning(
                "%s is an untrained architecture: its weights are random (seed 0); give a trained model (a run "
                "folder, zoo:NAME) or its weights as %s@FILE", self.spec, self.spec,
            )  # fmt: skip
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

    def shaped_for(self, model: str | None) -> DataSource:
        """This source; an image folder without its own image size and channels takes them from the input shape a
        robustlab model file ``model`` records (if it does)."""
        from robustlab.models import model_file_header

        if not model or not self.name.startswith("imagefolder") or (self.image_size, self.channels) != (None, None):
            return self
        shape = (model_file_header(model) or {}).get("input_shape")
        return replace(self, channels=shape[0], image_size=shape[-1]) if shape else self

    def load(self) -> Dataset:
        data = load_dataset(self.name, self.split, self.root, self.download, image_size=self.image_size,
                            channels=self.channels)  # fmt: skip
        return first_n(data, self.n)

    def fingerprint(self) -> dict[str, Any]:
        shape = {k: getattr(self, k) for k in ("image_size", "channels") if getattr(self, k) is not None}
        return {"dataset": self.name, "split": self.split, "n": self.n, **shape}


def model_fingerprint(model: nn.Module | str | ModelSource) -> dict[str, Any]:
    """A model's part of a run's fingerprint, without loading a spec: the spec and its files' content, or a
    module's class and weights."""
    if isinstance(model, (str, ModelSource)):
        return (ModelSource(model) if isinstance(model, str) else model).fingerprint()
    return {"model": type(model).__name__, "model_state_sha256": state_dict_digest(model.state_dict())}


def data_fingerprint(data: Data | str | DataSource) -> dict[str, Any]:
    """Data's part of a run's fingerprint, without loading a name: its name, split and size, or an object's size
    and the digest of every item (:func:`data_digest`)."""
    if isinstance(data, (str, DataSource)):
        return (DataSource(data) if isinstance(data, str) else data).fingerprint()
    n = len(data[1]) if isinstance(data, tuple) else len(data)  # type: ignore[arg-type]
    return {"dataset": type(data).__name__, "n": n, "data_sha256": data_digest(data)}


def data_digest(data: Data) -> str:
    """SHA-256 of the items a run evaluates (images and labels, in order), so data changed under the same name is
    other data: tensors held in memory are hashed directly, an image folder's files by their bytes (no decoding),
    any other dataset item by item. Cheap next to an evaluation (10 000 Fashion-MNIST images: about 70 ms)."""
    base, index = data, None
    while isinstance(base, Subset):  # first_n and friends: the items of the underlying dataset they select
        index = [base.indices[i] for i in (index if index is not None else range(len(base)))]
        base = base.dataset
    digest = hashlib.sha256()
    if isinstance(data, tuple):
        for part in data:
            digest.update(_item_bytes(part))
        return digest.hexdigest()
    which = list(index) if index is not None else None
    if isinstance(base, ImageTensorDataset):
        rows = torch.as_tensor(which, dtype=torch.long) if which is not None else slice(None)
        digest.update(tensor_bytes(base.images[rows]) + tensor_bytes(base.labels[rows]))
    elif isinstance(getattr(base, "samples", None), list) and callable(getattr(base, "loader", None)):
        for i in which if which is not None else range(len(base.samples)):  # an ImageFolder: (path, label) pairs
            path, label = base.samples[i]
            digest.update(f"{label}:{file_digest(path)}".encode())
    elif isinstance(getattr(base, "data", None), np.ndarray):  # torchvision's CIFAR and SVHN: arrays in memory
        rows = which if which is not None else slice(None)
        labels = np.asarray(getattr(base, "targets", getattr(base, "labels", [])))
        digest.update(np.ascontiguousarray(base.data[rows]).tobytes())
        digest.update(np.ascontiguousarray(labels[rows] if labels.size else labels).tobytes())
    else:
        for i in which if which is not None else range(len(base)):  # type: ignore[arg-type]
            for part in base[i]:
                digest.update(_item_bytes(part))
    return digest.hexdigest()


def _item_bytes(part: Any) -> bytes:
    """A dataset item's part (tensor, array, PIL image, number; anything else by its repr) as bytes, for hashing."""
    if isinstance(part, Tensor):
        return tensor_bytes(part)
    array = np.asarray(part)
    return repr(part).encode() if array.dtype == object else np.ascontiguousarray(array).tobytes()


def resolve_model(model: nn.Module | str | ModelSource, device: torch.device | str) -> tuple[nn.Module, str, dict]:
    """``(module, name for reports, fingerprint)`` of a model given as a module, a spec or a :class:`ModelSource`;
    one error line for a device that is not there (``"cuda"`` without a GPU)."""
    from robustlab.eval.evaluator import checked_device

    device = checked_device(device)
    if isinstance(model, str):
        model = ModelSource(model)
    if isinstance(model, ModelSource):  # the weights actually loaded: a file replaced under a folder's name is seen
        module = model.load(device)
        return module, model.spec, {**model.fingerprint(), "model_state_sha256": state_dict_digest(module.state_dict())}
    return model, type(model).__name__, model_fingerprint(model)


def resolve_data(data: Data | str | DataSource, digest: bool = True) -> tuple[Data, str, str, dict]:
    """``(dataset, name, split, fingerprint)`` of data given as a dataset, an ``(x, y)`` pair, a name or a
    :class:`DataSource`; the fingerprint holds the digest of the items used (:func:`data_digest`), computed only
    with ``digest`` (a caller that keys its run otherwise skips the extra pass over the items)."""
    if isinstance(data, str):
        data = DataSource(data)
    if isinstance(data, DataSource):
        loaded = data.load()
        with contextlib.suppress(TypeError):
            _DATA_NAMES[loaded] = canonical_name(data.name)
        key = {**data.fingerprint(), "data_sha256": data_digest(loaded)} if digest else data.fingerprint()
        return loaded, data.name, data.split, key
    from robustlab.eval.evaluator import as_data

    data = as_data(data)  # numpy arrays as tensors; lists, a label count that differs: one line
    return data, type(data).__name__, "-", data_fingerprint(data) if digest else {}


def first_batch(data: Data, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` items (fewer if the data is smaller) as two tensors."""
    if isinstance(data, tuple):
        return data[0][:n], data[1][:n]
    if len(data) == 0:  # type: ignore[arg-type]
        raise RobustlabError("nothing to evaluate: the dataset is empty")
    x, y = next(iter(DataLoader(data, batch_size=min(n, len(data)), shuffle=False)))  # type: ignore[arg-type]
    return x, torch.as_tensor(y)


def check_domain(model: nn.Module, data: Data, shape: tuple[int, ...]) -> None:
    """Refuse, in one line naming the fix, a model on data of another domain: its recorded dataset (zoo entry,
    model file header, RobustBench entry) differs from the data's name, or its recorded input shape or its
    normalisation's channels differ from the images' ``shape`` ``(C, H, W)`` (a 3-channel mean would otherwise
    broadcast 1-channel images into 3 silently)."""
    from robustlab.models.loader import recorded_domain

    domain = recorded_domain(model) or {}
    spec, source = domain.get("spec", "the model"), domain.get("source")
    name = _data_name(data)
    what, folder = name or "the data", name == "imagefolder"
    made_for = domain.get("dataset")
    if made_for and name and "imagefolder" not in (made_for, name) and made_for != name:
        raise RobustlabError(
            f"{spec} was made for {made_for} (per {source}) but the data is {name}; evaluate it on "
            f"{made_for}, or choose a model made for {name}"
        )
    if len(shape) != 3:
        return
    norm = next((m for m in model.modules() if isinstance(m, Normalize) and m.mean.numel() > 1), None)
    channels = domain.get("channels") or (norm.mean.numel() if norm is not None else None)
    source = source or "its normalisation"
    size = domain.get("size")
    wrong_channels = channels is not None and channels != shape[0]
    wrong_size = size is not None and tuple(size) != tuple(shape[1:])
    if not (wrong_channels or wrong_size):
        return
    takes = f"{channels}x{size[0]}x{size[1]}" if size and channels else f"{channels}-channel"
    if folder:
        flags = [f"--channels {channels}"] if wrong_channels else []
        flags += [f"--image-size {size[0]}"] if wrong_size and size[0] == size[1] else []  # type: ignore[index]
        fix = "pass " + " ".join(flags) if flags else f"give it {takes} images"
    else:
        fix = f"choose a model built for {what}'s {'x'.join(map(str, shape))} images"
    raise RobustlabError(
        f"{spec} takes {takes} images (per {source}) but {what} has {'x'.join(map(str, shape))} images, so it does not "
        f"fit; {fix}"
    )


def chance_flag(clean_accuracy: float, n: int, num_classes: int) -> Any:
    """A fired :class:`~robustlab.eval.sanity.Flag` when clean accuracy is at chance level: ``1/num_classes`` lies
    inside its 95 % Clopper-Pearson interval over ``n`` samples (the model does not know this data: wrong domain,
    wrong label order, untrained weights); None otherwise."""
    from robustlab.eval.intervals import clopper_pearson
    from robustlab.eval.sanity import Flag

    if num_classes < 2 or n < 1:
        return None
    chance = 1 / num_classes
    low, high = clopper_pearson(round(clean_accuracy * n), n)
    if not low <= chance <= high:
        return None
    return Flag(
        "clean_accuracy_at_chance", True,
        f"clean accuracy {100 * clean_accuracy:.1f} % (95 % interval [{100 * low:.1f}, {100 * high:.1f}], n = {n}) is "
        f"at chance level for {num_classes} classes ({100 * chance:.1f} %): the model does not know this data (another "
        "domain, label order or untrained weights?); robust accuracy means nothing here",
        {"clean_accuracy": clean_accuracy, "n": n, "chance": chance, "interval": [low, high]},
    )  # fmt: skip


_DATA_NAMES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _data_name(data: Data) -> str | None:
    """The dataset name (``fashion-mnist``, ``imagefolder``, ...) :func:`resolve_data` loaded ``data`` by, if any."""
    try:
        return _DATA_NAMES.get(data)
    except TypeError:  # a tuple takes no weak reference: data given as tensors has no name
        return None


def probe(model: nn.Module, data: Data, device: torch.device | str, ks: Sequence[int] | None = None) -> int:
    """Run the model on two samples before any long work; returns the number of classes, or one error line: a
    model whose input does not fit the data (its recorded dataset or input shape, see :func:`check_domain`),
    labels outside its classes, top-k values it cannot have."""
    x, y = first_batch(data, 2)
    check_domain(model, data, tuple(x.shape[1:]))
    try:
        with torch.no_grad():
            logits = model_logits(model, x.to(device))
    except RobustlabError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        takes = f"its first convolution takes {conv.in_channels}-channel images; " if conv is not None else ""
        fix = "set the images' shape with --channels C --image-size S" if _data_name(data) == "imagefolder" else (
            "choose a model built for this dataset")  # fmt: skip
        raise RobustlabError(
            f"the model does not fit this dataset's inputs of shape {tuple(x.shape[1:])} ({first}); {takes}{fix}"
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
    "chance_flag",
    "check_domain",
    "data_digest",
    "data_fingerprint",
    "first_batch",
    "model_fingerprint",
    "probe",
    "resolve_data",
    "resolve_model",
]
