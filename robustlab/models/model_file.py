"""The one model file every robustlab command writes: the weights with what it takes to rebuild the classifier
(architecture, classes, normalisation, input shape, dataset, the command that trained it), readable with
``torch.load(..., weights_only=True)``, so ``--model runs/NAME`` and ``--model runs/NAME/model.pt`` just work."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustlab.errors import CheckpointError
from robustlab.models.build import build_model, build_spec
from robustlab.models.digest import state_dict_digest
from robustlab.models.mode import temporary_mode
from robustlab.models.normalize import Normalize

MODEL_FORMAT = "robustlab-model"
MODEL_FILE_VERSION = 1


def is_model_file(obj: Any) -> bool:
    """Whether a loaded checkpoint is a robustlab model file (this format, or the older ``model_state`` one)."""
    if not isinstance(obj, dict):
        return False
    if obj.get("format") == MODEL_FORMAT:
        return True
    return isinstance(obj.get("arch"), str) and isinstance(obj.get("model_state"), dict)


def count_outputs(model: nn.Module, input_shape: Sequence[int]) -> int | None:
    """The number of logits ``model`` returns for one zero image of ``input_shape`` (None if it does not run)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad(), temporary_mode(model, training=False):
            out = model(torch.zeros(1, *input_shape, device=device))
    except Exception:  # a model that does not take this shape: the file then records no class count
        return None
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None


def save_model(
    path: str | os.PathLike,
    model: nn.Module,
    arch: str | None,
    *,
    dataset: str | None = None,
    input_shape: Sequence[int] | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    command: str | None = None,
    **meta: Any,
) -> dict[str, Any]:
    """Write ``model`` as a self-describing robustlab model file and return what was written (without weights).

    ``arch`` is what rebuilds the network: an architecture name (``cnn``, ...), ``torchvision:NAME`` or
    ``package.module:factory`` (None: unknown, then the file needs ``--model SPEC --checkpoint FILE``). The class
    count is measured by one forward pass of a zero image of ``input_shape`` (default: the dataset's); the
    normalisation is the outer :class:`Normalize` wrapper's, if any.
    """
    from robustlab.data import dataset_info
    from robustlab.io import atomic_torch_save

    if input_shape is None and dataset is not None:
        info = dataset_info(dataset)
        input_shape = (info["channels"], info["image_size"], info["image_size"])
    normalization = None
    if isinstance(model, Normalize):
        normalization = {"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}
    header = {
        "format": MODEL_FORMAT, "version": MODEL_FILE_VERSION, "arch": arch, "arch_kwargs": dict(arch_kwargs or {}),
        "num_classes": count_outputs(model, input_shape) if input_shape is not None else None, "dataset": dataset,
        "normalization": normalization, "input_shape": list(input_shape) if input_shape is not None else None,
        "command": command, **meta,
    }  # fmt: skip
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    header["weights_sha256"] = state_dict_digest(state)  # a flipped bit in the weights is refused when loaded
    atomic_torch_save({**header, "state_dict": state}, path)
    return header


def _file_state(saved: dict[str, Any]) -> dict[str, torch.Tensor]:
    return saved["state_dict"] if saved.get("format") == MODEL_FORMAT else saved["model_state"]


def _build(saved: dict[str, Any]) -> nn.Module:
    """The untrained network a model file describes (its architecture, classes, input shape, normalisation)."""
    arch, num_classes = saved["arch"], saved.get("num_classes")
    if saved.get("format") != MODEL_FORMAT:  # the older {"model_state", "arch", "dataset"} files
        return build_model(arch, saved.get("dataset") or "fashion-mnist", num_classes=num_classes)
    norm = saved.get("normalization") or None
    mean, std = (norm["mean"], norm["std"]) if norm else (None, None)
    shape = saved.get("input_shape")
    return build_spec(arch, num_classes, mean, std, shape, saved.get("dataset"), **saved.get("arch_kwargs", {}))


def check_weights(spec: str, saved: dict[str, Any], state: Any) -> None:
    """Refuse (one line) a model file whose weights do not match the SHA-256 its header records; a file without
    one (written before robustlab recorded it, like the zoo's) passes."""
    recorded = saved.get("weights_sha256")
    if isinstance(recorded, str) and isinstance(state, dict) and state_dict_digest(state) != recorded:
        raise CheckpointError(
            f"model file {spec!r}: its weights do not match the SHA-256 recorded in its header (the file was "
            "damaged or edited); restore it, or save or train it again"
        )


def mismatch(model: nn.Module, state: dict[str, Any]) -> str | None:
    """The first difference between a model's state dict and a checkpoint's, in a few words (None: they fit)."""
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            return f"unexpected key {key!r}"
        if hasattr(value, "shape") and tuple(value.shape) != tuple(own[key].shape):
            return f"{key!r} is {tuple(value.shape)} in the checkpoint but {tuple(own[key].shape)} in the model"
    missing = [k for k in own if k not in state]
    return f"missing key {missing[0]!r}" if missing else None


def model_from_file(spec: str, saved: dict[str, Any]) -> nn.Module:
    """The classifier a robustlab model file describes, with its weights."""
    if saved.get("arch") is None:
        raise CheckpointError(
            f"model file {spec!r} does not name its architecture (it was trained from a TorchScript or pickled "
            "model); give the architecture as --model SPEC and this file as --checkpoint"
        )
    state = _file_state(saved)
    check_weights(spec, saved, state)
    model = _build(saved)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, KeyError) as exc:
        detail = mismatch(model, state) if isinstance(state, dict) else None
        raise CheckpointError(
            f"model file {spec!r} does not fit its own architecture {saved['arch']!r} "
            f"({detail or str(exc).splitlines()[0]}); the file is damaged: save or train it again"
        ) from None
    return model


def describe_file(saved: dict[str, Any]) -> dict[str, Any]:
    """A model file's header (everything but the weights)."""
    return {k: v for k, v in saved.items() if k not in ("state_dict", "model_state")}


__all__ = [
    "MODEL_FORMAT",
    "check_weights",
    "count_outputs",
    "describe_file",
    "is_model_file",
    "mismatch",
    "model_from_file",
    "save_model",
]
