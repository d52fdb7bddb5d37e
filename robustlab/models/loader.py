"""One loader for every model spec: an architecture, a registered source (``zoo:NAME`` here, ``torchvision:NAME``,
``timm:NAME``, ``robustbench:NAME``: :mod:`robustlab.models.sources`), ``module:factory``, model or TorchScript file."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
import weakref
import zipfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.errors import CheckpointError, RobustlabError
from robustlab.models import hub  # noqa: F401  (registers the timm: and robustbench: sources)
from robustlab.models.arch import ARCHITECTURES, seeded_weights
from robustlab.models.build import build_model, load_factory
from robustlab.models.checkpoint import _robustlab_checkpoint, load_weights, model_file_header
from robustlab.models.model_file import model_from_file
from robustlab.models.normalize import Normalize
from robustlab.models.sources import SOURCES, ModelRequest, ModelSource, domain_of, source_of

log = logging.getLogger(__name__)
ZOO_DIR = Path(__file__).parent / "zoo"


ZOO_FIELDS = ("arch", "checkpoint", "dataset")  # what every zoo entry needs to be loaded


@cache
def zoo_index() -> dict[str, dict[str, Any]]:
    """The embedded zoo's metadata, ``{name: {...}}`` (from ``models/zoo/zoo.json``); one error line naming the
    file and the field for a damaged file or an entry without what loading it needs."""
    path = ZOO_DIR / "zoo.json"
    if not path.exists():
        return {}
    fix = "restore it from the robustlab release (git checkout or reinstall)"
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RobustlabError(f"{path} is damaged ({str(exc).splitlines()[0][:80]}); {fix}") from None
    if not isinstance(index, dict):
        raise RobustlabError(f"{path} holds {type(index).__name__}, not {{name: entry}}; {fix}")
    for name, meta in index.items():
        if not isinstance(meta, dict):
            raise RobustlabError(f"{path}: entry {name!r} is {type(meta).__name__}, not an object; {fix}")
        bad = next((f for f in ZOO_FIELDS if not isinstance(meta.get(f), str) or not meta[f]), None)
        if bad is not None:
            raise RobustlabError(f"{path}: entry {name!r} lacks the field {bad!r} (or it is not a name); {fix}")
        if not isinstance(meta.get("arch_kwargs", {}), dict):
            raise RobustlabError(f"{path}: entry {name!r} has a field 'arch_kwargs' that is not an object; {fix}")
    return index


def split_weights(spec: str, checkpoint: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """``"SPEC@FILE"`` -> ``("SPEC", "FILE")``: the one spelling of a model with its weights wherever a model is taken
    (``--model``, ``--source``, ``--targets``, ``--surrogate``, ``--encoder``, ``--teacher``); ``--checkpoint FILE``
    is the same for the one model of a command. A path that exists is never split (it may hold an ``@``)."""
    spec = str(spec)
    if "@" not in spec or os.path.exists(spec):
        return spec, None if checkpoint is None else str(checkpoint)
    model, _, weights = spec.rpartition("@")
    if not model or not weights:
        raise RobustlabError(f"model spec {spec!r}: give the weights after the model: torchvision:resnet18@r18.pt")
    if checkpoint is not None and os.path.abspath(checkpoint) != os.path.abspath(weights):
        raise RobustlabError(
            f"model {spec!r} names its weights and --checkpoint {str(checkpoint)!r} names others; give them once"
        )
    return model, weights


def load_model(
    spec: str,
    checkpoint: str | os.PathLike | None = None,
    trust_checkpoint: bool = False,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    *,
    dataset: str = "fashion-mnist",
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """The one model loader: a classifier from a spec, returned in eval mode on ``device``, taking [0, 1] pixels.

    Specs: an architecture name (``cnn``, ...: a fresh model for ``dataset`` or images of ``input_shape``, weights
    drawn from ``seed`` without touching the global RNG), ``zoo:NAME`` (embedded zoo), ``torchvision:NAME``
    (ImageNet normalisation unless ``mean``/``std``; ``num_classes`` outputs; weights from ``checkpoint``),
    ``package.module:factory`` (imported
    from the current folder too, as ``python -m`` does; + ``checkpoint``), a robustlab model file (what every
    training command writes as ``OUT/model.pt``) or the run folder holding it, or a TorchScript file.
    Any of them may name its weights as ``SPEC@FILE`` (:func:`split_weights`), the same as ``checkpoint=FILE``.
    """
    spec, checkpoint = split_weights(spec, checkpoint)
    if spec in ARCHITECTURES and not os.path.exists(spec):
        with seeded_weights(seed):
            model = build_model(spec, dataset, num_classes=num_classes, mean=mean, std=std, input_shape=input_shape)
        if checkpoint is not None:
            load_weights(model, checkpoint, trust_checkpoint)
        return model.to(device).eval()
    given, domain = spec, None
    if os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, "model.pt")):
            raise RobustlabError(
                f"folder {spec!r} holds no model.pt; give a finished robustlab run folder (training writes model.pt "
                "at the end) or a model file"
            )
        spec = os.path.join(spec, "model.pt")
    if (source := source_of(spec)) is not None:
        request = ModelRequest(checkpoint, trust_checkpoint, num_classes, mean, std)
        model, domain = source.load(spec, request)
        if source.loads_weights:
            checkpoint = None
    elif Path(spec).is_file() and (saved := _robustlab_checkpoint(spec, trust_checkpoint)) is not None:
        model = saved if isinstance(saved, nn.Module) else model_from_file(spec, saved)
        if isinstance(saved, dict):
            domain = domain_of("its model file's header", saved.get("dataset"), saved.get("input_shape"))
    elif Path(spec).is_file():
        model = _load_torchscript(spec)
    elif ":" in spec:
        model = load_factory(spec, num_classes)
        if mean is not None:
            model = Normalize(model, mean, std)
        if checkpoint is None:
            log.warning(
                "%s given without --checkpoint: its weights are whatever the factory sets (random unless it loads "
                "them); give them as %s@FILE", spec, spec,
            )  # fmt: skip
    else:
        raise RobustlabError(
            f"cannot read model spec {spec!r}; use an architecture ({', '.join(ARCHITECTURES)}), zoo:NAME "
            f"({', '.join(zoo_index()) or 'none installed'}), {', '.join(f'{p}:NAME' for p in SOURCES if p != 'zoo')}, "
            "package.module:factory, a robustlab run folder or model file, or the path of a TorchScript file"
        )
    if checkpoint is not None:
        load_weights(model, checkpoint, trust_checkpoint)
    return _remember(model.to(device).eval(), given, domain)


_DOMAINS: weakref.WeakKeyDictionary[nn.Module, dict[str, Any]] = weakref.WeakKeyDictionary()


def recorded_domain(model: nn.Module) -> dict[str, Any] | None:
    """What the loader read about the data ``model`` was made for, where its source records it (a zoo entry, a
    model file's header, a RobustBench entry): ``{"spec", "source", "dataset", "channels", "size"}`` (a value is
    None where unknown), or None for a model robustlab did not load or knows nothing about."""
    return _DOMAINS.get(model)


def _remember(model: nn.Module, spec: str, domain: dict[str, Any] | None) -> nn.Module:
    if domain is not None:
        with contextlib.suppress(TypeError):  # a module that takes no weak reference: nothing recorded or checked
            _DOMAINS[model] = {"spec": spec, **domain}
    return model


def _load_torchscript(spec: str) -> nn.Module:
    if Path(spec).stat().st_size == 0:
        raise CheckpointError(f"model file {spec!r} is empty (0 bytes); it was not saved completely: save it again")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream but still what users ship
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(spec, map_location="cpu")
    except RuntimeError as exc:
        if _broken_archive(spec):
            raise CheckpointError(
                f"model file {spec!r} is truncated or corrupt (a torch.save archive that does not open: it was not "
                "written completely); save it again, or re-train the run that wrote it"
            ) from None
        raise CheckpointError(
            f"{spec!r} is not a TorchScript file ({str(exc).splitlines()[0][:100]}); for a state dict give the "
            "architecture as package.module:factory and the file as --checkpoint"
        ) from None


def _broken_archive(path: str) -> bool:
    """Whether ``path`` starts like a zip archive (what torch.save and TorchScript write) but does not open as one."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return False
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is not None
    except (zipfile.BadZipFile, OSError, EOFError):
        return True


def model_arch(spec: str) -> tuple[str | None, str | None]:
    """The ``(arch, dataset)`` a model spec was built from, where robustlab knows it: an architecture name, the
    zoo's or a model file's architecture, or the spec itself for ``torchvision:NAME`` and ``module:factory``."""
    spec = split_weights(spec)[0]
    if spec in ARCHITECTURES and not os.path.exists(spec):
        return spec, None
    if spec.startswith("zoo:") and spec[4:] in zoo_index():
        meta = zoo_index()[spec[4:]]
        return meta["arch"], meta["dataset"]
    header = model_file_header(spec)
    if header is not None:
        return header.get("arch"), header.get("dataset")
    if ":" in spec and not os.path.exists(spec):  # a source's NAME or package.module:factory
        return spec, None
    return None, None


def _load_zoo(spec: str, request: ModelRequest) -> tuple[nn.Module, dict[str, Any] | None]:
    name, index = spec.partition(":")[2], zoo_index()
    if name not in index:
        raise RobustlabError(f"unknown zoo model {name!r}; available: {', '.join(sorted(index))}")
    meta = index[name]
    model = build_model(meta["arch"], meta["dataset"], **meta.get("arch_kwargs", {}))
    return load_weights(model, ZOO_DIR / meta["checkpoint"]), domain_of("its zoo entry", meta["dataset"], None)


SOURCES.register("zoo", ModelSource(_load_zoo))
