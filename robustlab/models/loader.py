"""One loader for every model spec: ``zoo:NAME``, ``torchvision:NAME``, ``module:factory``, TorchScript files."""

from __future__ import annotations

import importlib
import json
import logging
import os
import warnings
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.errors import CheckpointError, RobustlabError
from robustlab.io import safe_load
from robustlab.models.arch import ARCHITECTURES, seeded_weights
from robustlab.models.normalize import DATASET_STATS, Normalize

log = logging.getLogger(__name__)
ZOO_DIR = Path(__file__).parent / "zoo"


@cache
def zoo_index() -> dict[str, dict[str, Any]]:
    """The embedded zoo's metadata, ``{name: {...}}`` (from ``models/zoo/zoo.json``)."""
    path = ZOO_DIR / "zoo.json"
    return json.loads(path.read_text()) if path.exists() else {}


def build_model(arch: str, dataset: str = "fashion-mnist", num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """A fresh ``arch`` for ``dataset``, wrapped in the dataset's :class:`Normalize`."""
    from robustlab.data import dataset_info

    if arch not in ARCHITECTURES:
        raise RobustlabError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    info = dataset_info(dataset)
    model = ARCHITECTURES[arch](
        in_channels=info["channels"],
        num_classes=num_classes or info["num_classes"],
        image_size=info["image_size"],
        **kwargs,
    )
    mean, std = DATASET_STATS.get(info["stats"], ((0.5,) * info["channels"], (0.5,) * info["channels"]))
    return Normalize(model, mean, std)


def load_checkpoint(path: str | os.PathLike, trust: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` unless ``trust``; clear errors for missing or corrupt files."""
    return safe_load(path, trust)


def _state_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint (raw, or under 'state_dict' / 'model' / 'model_state')."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("model_state", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return _state_dict(obj[key], path)
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k.removeprefix("module."): v for k, v in obj.items()}
    raise CheckpointError(f"checkpoint {str(path)!r} holds no state dict (a dict of tensors)")


def load_weights(model: nn.Module, checkpoint: str | os.PathLike, trust: bool = False) -> nn.Module:
    """Load a checkpoint's weights into ``model`` (also into the inner model of a Normalize wrapper)."""
    state = _state_dict(load_checkpoint(checkpoint, trust), checkpoint)
    targets = [model] + ([model.model] if isinstance(model, Normalize) else [])
    errors = []
    for target in targets:
        try:
            target.load_state_dict(state)
            return model
        except RuntimeError as exc:
            errors.append(str(exc).splitlines()[0])
    raise CheckpointError(
        f"checkpoint {str(checkpoint)!r} does not fit the model ({errors[0]}); check the architecture and "
        "number of classes"
    )


def load_model(
    spec: str,
    checkpoint: str | os.PathLike | None = None,
    trust_checkpoint: bool = False,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    *,
    dataset: str = "fashion-mnist",
    seed: int = 0,
) -> nn.Module:
    """The one model loader: a classifier from a spec, returned in eval mode on ``device``, taking [0, 1] pixels.

    Specs: an architecture name (``cnn``, ...: a fresh model for ``dataset``, weights drawn from ``seed`` without
    touching the global RNG), ``zoo:NAME`` (embedded zoo), ``torchvision:NAME`` (ImageNet normalisation added;
    weights from ``checkpoint``), ``package.module:factory`` (+ ``checkpoint``), the path of a checkpoint that names
    its architecture (``{"model_state", "arch", "dataset"}``, as robustlab's trainers save) or the run folder that
    holds it as ``model.pt``, or a TorchScript file.
    """
    if spec in ARCHITECTURES and not os.path.exists(spec):
        with seeded_weights(seed):
            model = build_model(spec, dataset, num_classes=num_classes)
        return model.to(device).eval()
    if os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "model.pt")):
        spec = os.path.join(spec, "model.pt")
    if spec.startswith("zoo:"):
        model = _load_zoo(spec[4:])
    elif spec.startswith("torchvision:"):
        model = _load_torchvision(spec[len("torchvision:") :], num_classes)
        if checkpoint is None:
            log.warning("torchvision:%s has random weights; pass a checkpoint", spec)
    elif Path(spec).is_file() and (saved := _robustlab_checkpoint(spec, trust_checkpoint)) is not None:
        model = saved if isinstance(saved, nn.Module) else _from_saved(spec, saved)
    elif Path(spec).is_file():
        model = _load_torchscript(spec)
    elif ":" in spec:
        model = _load_factory(spec)
    else:
        raise RobustlabError(
            f"cannot read model spec {spec!r}; use zoo:NAME ({', '.join(zoo_index()) or 'none installed'}), "
            "torchvision:NAME, package.module:factory, or the path of a TorchScript file"
        )
    if checkpoint is not None:
        load_weights(model, checkpoint, trust_checkpoint)
    return model.to(device).eval()


def _from_saved(spec: str, saved: dict[str, Any]) -> nn.Module:
    """The classifier a robustlab model file describes (architecture, dataset, classes, state)."""
    model = build_model(saved["arch"], saved.get("dataset") or "fashion-mnist", num_classes=saved.get("num_classes"))
    try:
        model.load_state_dict(saved["model_state"])
    except (RuntimeError, TypeError, AttributeError, KeyError) as exc:
        raise CheckpointError(
            f"model file {spec!r} does not fit its own architecture {saved['arch']!r} "
            f"({str(exc).splitlines()[0]}); the file is damaged: save or train it again"
        ) from None
    return model


def _load_torchscript(spec: str) -> nn.Module:
    if Path(spec).stat().st_size == 0:
        raise CheckpointError(f"model file {spec!r} is empty (0 bytes); it was not saved completely: save it again")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream but still what users ship
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(spec, map_location="cpu")
    except RuntimeError as exc:
        raise CheckpointError(
            f"{spec!r} is not a TorchScript file ({str(exc).splitlines()[0][:100]}); for a state dict give the "
            "architecture as package.module:factory and the file as --checkpoint"
        ) from None


def model_arch(spec: str) -> tuple[str | None, str | None]:
    """The ``(arch, dataset)`` a model spec was built from, where robustlab knows it (zoo or its own model file)."""
    if spec.startswith("zoo:") and spec[4:] in zoo_index():
        meta = zoo_index()[spec[4:]]
        return meta["arch"], meta["dataset"]
    path = os.path.join(spec, "model.pt") if os.path.isdir(spec) else spec
    if os.path.isfile(path):
        try:
            obj = load_checkpoint(path)
        except RobustlabError:
            return None, None
        if isinstance(obj, dict):
            return obj.get("arch"), obj.get("dataset")
    return None, None


def _robustlab_checkpoint(path: str, trust: bool = False) -> Any:
    """What a model file holds: a classifier saved with its architecture (``{"model_state", "arch", "dataset",
    "num_classes"}``, as robustlab's trainers write), a whole ``nn.Module`` (``torch.save(model)``, only with
    ``trust``), or None for a TorchScript archive or a file that is no PyTorch pickle (a pickle without an
    architecture is refused: it needs a factory). A file holding Python objects is refused
    (one line, naming ``--trust-checkpoint``) unless trusted: it is never unpickled."""
    try:
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("constants.pkl") for name in archive.namelist()):
                return None  # a TorchScript archive (torch.load would hand it to torch.jit.load)
    except (zipfile.BadZipFile, OSError):
        pass
    try:
        obj = safe_load(path, trust, what="model file")
    except CheckpointError as exc:
        if "--trust-checkpoint" in str(exc):
            raise
        return None  # not a PyTorch pickle at all: perhaps TorchScript, which torch.jit.load will judge
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get("arch"), str) and isinstance(obj.get("model_state"), dict):
        return obj
    raise CheckpointError(
        f"model file {path!r} holds weights but no architecture; give the architecture as package.module:factory "
        "(or zoo:/torchvision:) and this file as --checkpoint"
    )


def _load_zoo(name: str) -> nn.Module:
    index = zoo_index()
    if name not in index:
        raise RobustlabError(f"unknown zoo model {name!r}; available: {', '.join(sorted(index))}")
    meta = index[name]
    model = build_model(meta["arch"], meta["dataset"], **meta.get("arch_kwargs", {}))
    return load_weights(model, ZOO_DIR / meta["checkpoint"])


def _load_torchvision(name: str, num_classes: int | None) -> nn.Module:
    import torchvision

    try:
        kwargs = {"num_classes": num_classes} if num_classes else {}
        net = torchvision.models.get_model(name, weights=None, **kwargs)
    except ValueError:
        raise RobustlabError(f"torchvision has no model {name!r}; see torchvision.models.list_models()") from None
    mean, std = DATASET_STATS["imagenet"]
    return Normalize(net, mean, std)


def _load_factory(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RobustlabError(f"cannot import {spec!r} ({exc}); give an importable package.module:factory") from None
    try:
        model = factory()
    except Exception as exc:  # the user's code: any error is theirs to fix, in one line
        cause = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise RobustlabError(f"model factory {spec!r} raised {type(exc).__name__}: {cause}; fix the factory") from None
    if not isinstance(model, nn.Module):
        raise RobustlabError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
