"""Reading a checkpoint: the state dict inside it, fitting it into a model, and what a robustlab model file holds."""

from __future__ import annotations

import os
import zipfile
from typing import Any

import torch
from torch import nn

from robustlab.errors import CheckpointError, RobustlabError
from robustlab.io import ChangedFileError
from robustlab.models.model_file import check_weights, is_model_file, mismatch
from robustlab.models.normalize import Normalize
from robustlab.safe_load import safe_load


def load_checkpoint(path: str | os.PathLike, trust: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` unless ``trust``; clear errors for missing or corrupt files."""
    return safe_load(path, trust)


def _state_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint (raw, or under 'state_dict' / 'model' / 'model_state')."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        if is_model_file(obj):  # a robustlab model file: its weights must match the digest its header records
            check_weights(str(path), obj, obj.get("state_dict", obj.get("model_state")))
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
            errors.append(mismatch(target, state) or str(exc).splitlines()[0])
    first = min(errors, key=lambda e: "in the checkpoint but" not in e)  # a shape difference says the most
    hint = "; a different number of classes? pass --num-classes" if "in the checkpoint but" in first else ""
    raise CheckpointError(
        f"checkpoint {str(checkpoint)!r} does not fit the model ({first}{hint}); check the architecture and "
        "number of classes"
    )


def model_file_header(spec: str) -> dict[str, Any] | None:
    """What a robustlab model file (or the run folder holding one) says about its model, without the weights;
    None for any other spec."""
    path = os.path.join(spec, "model.pt") if os.path.isdir(spec) else spec
    if not os.path.isfile(path):
        return None
    try:
        obj = load_checkpoint(path)
    except RobustlabError:
        return None
    return {k: v for k, v in obj.items() if k not in ("state_dict", "model_state")} if is_model_file(obj) else None


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
        if "--trust-checkpoint" in str(exc) or isinstance(exc, ChangedFileError):
            raise
        return None  # not a PyTorch pickle at all: perhaps TorchScript, which torch.jit.load will judge
    if isinstance(obj, nn.Module):
        return obj
    if is_model_file(obj):
        return obj
    raise CheckpointError(
        f"model file {path!r} holds weights but no architecture (a bare state dict); load it as --model ARCH "
        "--checkpoint FILE with ARCH the architecture it was saved from (cnn, zoo:NAME, torchvision:NAME "
        "--num-classes N, package.module:factory)"
    )
