"""Model sources by prefix (``zoo:``, ``torchvision:``, ``timm:``, ``robustbench:``): each one loads the classifier a
spec ``PREFIX:NAME`` names and, where a model file records it as its architecture, builds the untrained network. A new
source is one :class:`ModelSource` plus one ``SOURCES.register`` line; the loader and the model file only look here."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from robustlab.registry import Registry


@dataclass(frozen=True)
class ModelRequest:
    """What a load asks for besides the spec: weights (``checkpoint``), whether they may hold Python objects
    (``trust``), the number of classes and the normalisation, where the caller gives them."""

    checkpoint: str | os.PathLike | None = None
    trust: bool = False
    num_classes: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None


@dataclass(frozen=True)
class ModelSource:
    """``load(spec, request) -> (classifier, domain)`` (domain: what :func:`domain_of` records, or None);
    ``build(spec, num_classes, mean, std)``: the untrained network a model file trained from ``spec`` is loaded into;
    ``loads_weights``: the source reads ``request.checkpoint`` itself (else the loader loads it afterwards)."""

    load: Callable[[str, ModelRequest], tuple[nn.Module, dict[str, Any] | None]]
    build: Callable[..., nn.Module] | None = None
    loads_weights: bool = False


SOURCES: Registry[ModelSource] = Registry("model source")


def source_of(spec: str) -> ModelSource | None:
    """The registered source of ``PREFIX:NAME`` (None: no registered prefix, e.g. ``package.module:factory``)."""
    prefix, colon, _ = str(spec).partition(":")
    return SOURCES.get(prefix) if colon and prefix in SOURCES else None


def domain_of(source: str, dataset: str | None, input_shape: Sequence[int] | None) -> dict[str, Any] | None:
    """A domain record from a dataset name and/or an input shape ``(C, H, W)`` (the dataset's when not given)."""
    from robustlab.data import DATASETS, canonical_name

    name = canonical_name(dataset) if isinstance(dataset, str) else None
    if input_shape is None and name in DATASETS and name != "imagefolder":
        input_shape = (DATASETS[name]["channels"], DATASETS[name]["image_size"], DATASETS[name]["image_size"])
    if name is None and not input_shape:
        return None
    shape = list(input_shape or [])
    return {"source": source, "dataset": name, "channels": shape[0] if shape else None,
            "size": tuple(shape[1:]) if len(shape) == 3 else None}  # fmt: skip


__all__ = ["SOURCES", "ModelRequest", "ModelSource", "domain_of", "source_of"]
