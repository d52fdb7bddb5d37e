"""Untrained networks: an architecture for a dataset (:func:`build_model`), what a model file records as its
architecture (:func:`build_spec`: a name, a registered source such as ``torchvision:NAME``, ``package.module:factory``),
and the ``torchvision:`` source."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

from robustlab.errors import RobustlabError
from robustlab.models.arch import ARCHITECTURES
from robustlab.models.normalize import DATASET_STATS, Normalize
from robustlab.models.sources import SOURCES, ModelRequest, ModelSource, domain_of, source_of

log = logging.getLogger(__name__)


def build_model(
    arch: str,
    dataset: str = "fashion-mnist",
    num_classes: int | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_shape: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A fresh ``arch`` for ``dataset`` (or images of ``input_shape``), wrapped in :class:`Normalize` (the
    dataset's statistics unless ``mean``/``std`` are given)."""
    from robustlab.data import dataset_info

    if arch not in ARCHITECTURES:
        raise RobustlabError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    info = dataset_info(dataset)
    channels, size = (input_shape[0], input_shape[-1]) if input_shape else (info["channels"], info["image_size"])
    model = ARCHITECTURES[arch](
        in_channels=channels, num_classes=num_classes or info["num_classes"] or 10, image_size=size, **kwargs
    )
    stats = DATASET_STATS.get(info["stats"]) if channels == info["channels"] else None
    default_mean, default_std = stats or ((0.5,) * channels, (0.5,) * channels)
    return Normalize(model, mean or default_mean, std or default_std)


def build_spec(
    arch: str,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_shape: Sequence[int] | None = None,
    dataset: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """An untrained network from what a model file records: an architecture name, ``torchvision:NAME``,
    ``timm:NAME``, ``robustbench:NAME`` or ``package.module:factory``, with its classes and normalisation."""
    if arch in ARCHITECTURES:
        return build_model(arch, dataset or "fashion-mnist", num_classes, mean=mean, std=std, input_shape=input_shape,
                           **kwargs)  # fmt: skip
    source = source_of(arch)
    if source is not None and source.build is not None:  # torchvision, the other zoos: without their weights
        return source.build(arch, num_classes, mean, std)
    model = load_factory(arch, num_classes)
    return Normalize(model, mean, std) if mean is not None and not isinstance(model, Normalize) else model


def torchvision_network(
    spec: str, num_classes: int | None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> nn.Module:
    """``torchvision:NAME`` without weights (``num_classes`` outputs), behind ImageNet's normalisation or mean/std."""
    import torchvision

    name = spec.partition(":")[2]
    try:
        kwargs = {"num_classes": num_classes} if num_classes else {}
        net = torchvision.models.get_model(name, weights=None, **kwargs)
    except ValueError:
        raise RobustlabError(f"torchvision has no model {name!r}; see torchvision.models.list_models()") from None
    default_mean, default_std = DATASET_STATS["imagenet"]
    return Normalize(net, mean or default_mean, std or default_std)


def _load_torchvision(spec: str, request: ModelRequest) -> tuple[nn.Module, dict[str, Any] | None]:
    model = torchvision_network(spec, request.num_classes, request.mean, request.std)
    if request.checkpoint is None:
        log.warning("%s has random weights (no --checkpoint given); give them as %s@FILE", spec, spec)
    return model, domain_of("its torchvision architecture", None, (3,))


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """The current folder on ``sys.path`` for one import, as ``python -m`` has it; ``sys.path`` restored after."""
    added = "" not in sys.path and os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        yield
    finally:
        if added and os.getcwd() in sys.path:
            sys.path.remove(os.getcwd())


def load_factory(spec: str, num_classes: int | None = None) -> nn.Module:
    """The network ``package.module:factory`` returns (``num_classes`` passed where the factory takes it)."""
    module_name, _, attr = spec.partition(":")
    try:
        with _cwd_importable():
            factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RobustlabError(
            f"cannot import {spec!r} ({exc}); give package.module:factory importable from the current folder "
            f"({os.getcwd()}) or from PYTHONPATH"
        ) from None
    kwargs = {}
    if num_classes is not None:
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        if "num_classes" not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            raise RobustlabError(f"model factory {spec!r} takes no num_classes argument; drop --num-classes")
        kwargs["num_classes"] = num_classes
    try:
        model = factory(**kwargs)
    except Exception as exc:  # the user's code: any error is theirs to fix, in one line
        cause = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise RobustlabError(f"model factory {spec!r} raised {type(exc).__name__}: {cause}; fix the factory") from None
    if not isinstance(model, nn.Module):
        raise RobustlabError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


SOURCES.register("torchvision", ModelSource(_load_torchvision, build=torchvision_network))

__all__ = ["build_model", "build_spec", "load_factory", "torchvision_network"]
