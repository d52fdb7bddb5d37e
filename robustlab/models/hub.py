"""Models from the zoos researchers already use: ``robustbench:NAME`` (a RobustBench leaderboard entry, through the
``robustbench`` package's own model definitions and checkpoint layout) and ``timm:NAME`` (a timm architecture with
timm's normalisation). Both packages are optional extras; weights always come from local files, never a download.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from robustlab.errors import CheckpointError, RobustlabError
from robustlab.models.checkpoint import load_checkpoint, load_weights
from robustlab.models.normalize import DATASET_STATS, Normalize
from robustlab.models.sources import SOURCES, ModelRequest, ModelSource

log = logging.getLogger(__name__)
HUB_PREFIXES = ("robustbench:", "timm:")
ROBUSTBENCH_MODEL_DIR = "./models"  # robustbench's own default: models/<dataset>/<threat_model>/<name>.pt


def is_hub_spec(spec: str) -> bool:
    """Whether ``spec`` names a model of another zoo (``robustbench:`` or ``timm:``)."""
    return spec.startswith(HUB_PREFIXES)


def load_hub_model(
    spec: str, checkpoint: str | os.PathLike | None = None, trust: bool = False, num_classes: int | None = None
) -> nn.Module:
    """The classifier ``spec`` names, in eval mode, taking [0, 1] pixels (its normalisation inside).

    ``robustbench:[DATASET/THREAT/]NAME``: ``checkpoint`` is robustbench's models folder (default ``./models``).
    ``timm:NAME``: ``checkpoint`` is a state dict file; ``num_classes`` (else read from the checkpoint's head).
    """
    kind, _, name = spec.partition(":")
    if not name:
        raise RobustlabError(f"model spec {spec!r} names no model; e.g. robustbench:Standard or timm:resnet18")
    if kind == "robustbench":
        return load_robustbench(name, checkpoint or ROBUSTBENCH_MODEL_DIR)
    return load_timm(name, checkpoint, trust, num_classes)


def _require(package: str, spec: str) -> ModuleType:
    if importlib.util.find_spec(package) is None:
        raise RobustlabError(f"{spec} needs the {package} package; pip install 'robustlab[{package}]'")
    with warnings.catch_warnings():  # deprecation notices of its dependencies are not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        return importlib.import_module(package)


def _robustbench_zoo() -> tuple[Any, Any, Any, Any]:
    """``(model_dicts, BenchmarkDataset, ThreatModel, utils)`` of the robustbench package."""
    spec = importlib.util.find_spec("robustbench")
    if spec is None:
        raise RobustlabError("robustbench: specs need the robustbench package; pip install 'robustlab[robustbench]'")
    with warnings.catch_warnings():  # deprecation notices of its dependencies are not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        if "robustbench" not in sys.modules:
            try:
                importlib.import_module("robustbench")
            except ImportError:
                # robustbench 1.1's __init__ imports its benchmark code (autoattack, pkg_resources), which the model
                # definitions and the loader do not use: register the package without running its __init__.
                sys.modules["robustbench"] = importlib.util.module_from_spec(spec)
        from robustbench import utils
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts, BenchmarkDataset, ThreatModel, utils


def robustbench_entry(name: str) -> tuple[str, str, str]:
    """``(dataset, threat_model, name)`` of ``[DATASET/THREAT/]NAME`` on RobustBench's leaderboards; a name on
    several leaderboards must say which."""
    model_dicts, _, _, _ = _robustbench_zoo()
    parts = name.split("/")
    if len(parts) not in (1, 3):
        raise RobustlabError(f"robustbench:{name}: give robustbench:NAME or robustbench:DATASET/THREAT/NAME")
    boards = {(d.value, t.value): entries for d, by_threat in model_dicts.items() for t, entries in by_threat.items()}
    if len(parts) == 3:
        dataset, threat, model = parts
        key = next(((d, t) for d, t in boards if d == dataset.lower() and t.lower() == threat.lower()), None)
        if key is None:
            raise RobustlabError(
                f"robustbench has no leaderboard {dataset}/{threat}; choose one of: {', '.join(map('/'.join, boards))}"
            )
        found = [key] if model in boards[key] else []
    else:
        model = name
        found = [key for key, entries in boards.items() if model in entries]
    if not found:
        names = sorted({n for entries in boards.values() for n in entries})
        close = difflib.get_close_matches(model, names, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see RobustBench's leaderboard for the names"
        raise RobustlabError(f"robustbench has no model {model!r} on that leaderboard; {hint}")
    if len(found) > 1:
        where = ", ".join(f"robustbench:{d}/{t}/{model}" for d, t in found)
        raise RobustlabError(f"robustbench:{model} is on {len(found)} leaderboards; name one: {where}")
    return found[0][0], found[0][1], model


def robustbench_weights(name: str, model_dir: str | os.PathLike = ROBUSTBENCH_MODEL_DIR) -> list[Path]:
    """The weight files robustbench's layout expects for ``[DATASET/THREAT/]NAME`` (several for an ensemble)."""
    model_dicts, benchmark_dataset, threat_model, _ = _robustbench_zoo()
    dataset, threat, model = robustbench_entry(name)
    path = Path(model_dir) / dataset / threat / f"{model}.pt"
    ids = model_dicts[benchmark_dataset(dataset)][threat_model(threat)][model].get("gdrive_id")
    return [Path(f"{path}_m{i}.pt") for i in range(len(ids))] if isinstance(ids, list) else [path]


def load_robustbench(name: str, model_dir: str | os.PathLike = ROBUSTBENCH_MODEL_DIR) -> nn.Module:
    """A RobustBench entry built by robustbench's own definition and loader, from weights already on disk."""
    _, _, _, utils = _robustbench_zoo()
    dataset, threat, model = robustbench_entry(name)
    if Path(model_dir).is_file():
        raise RobustlabError(f"robustbench:{name}: give the models folder (--model-dir DIR), not the file {model_dir}")
    timm = _require("timm", f"robustbench:{name}")
    timm_name = f"{model.lower().replace('-', '_')}_{dataset}_{threat.lower()}"
    if timm.is_model(timm_name):  # robustbench would fetch these from the Hugging Face hub
        raise RobustlabError(
            f"robustbench:{name} is served through timm from the Hugging Face hub; load a local copy with "
            f"timm:{timm_name} --checkpoint FILE"
        )
    missing = [str(p) for p in robustbench_weights(f"{dataset}/{threat}/{model}", model_dir) if not p.is_file()]
    if missing:
        raise RobustlabError(
            f"robustbench:{name}: weights {missing[0]} not found (robustlab never downloads at run time); download "
            "them once with robustbench.utils.load_model on a machine with network, or give their folder (--model-dir)"
        )
    try:
        net = utils.load_model(model, model_dir=str(model_dir), dataset=dataset, threat_model=threat)
    except Exception as exc:  # torch's and robustbench's errors for a damaged or foreign file
        cause = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"robustbench:{name}: cannot load the weights in {model_dir} ({cause})") from None
    return net.eval()


def hub_domain(spec: str) -> dict[str, Any] | None:
    """The data a hub model was made for, as the loader's ``recorded_domain`` records it: a
    RobustBench entry's dataset (CIFAR's 3x32x32 images, ImageNet's 3 channels); None for timm (its
    normalisation's channels are checked on their own)."""
    kind, _, name = spec.partition(":")
    if kind != "robustbench":
        return None
    dataset = robustbench_entry(name)[0]
    size = (32, 32) if dataset.startswith("cifar") else None
    return {"source": "its RobustBench entry", "dataset": dataset, "channels": 3, "size": size}


def load_timm(
    name: str, checkpoint: str | os.PathLike | None = None, trust: bool = False, num_classes: int | None = None
) -> nn.Module:
    """A timm architecture (weights from ``checkpoint``, never the hub) behind timm's own normalisation."""
    timm = _require("timm", f"timm:{name}")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise RobustlabError(f"timm has no model {name!r}; {hint}")
    if num_classes is None and checkpoint is not None:
        num_classes = _head_size(load_checkpoint(checkpoint, trust), timm, name)
    model = _timm_network(timm, name, num_classes)
    if checkpoint is None:
        log.warning("timm:%s has random weights; pass its weights as --checkpoint", name)
    else:
        load_weights(model, checkpoint, trust)
    return model.eval()


def _timm_network(timm: ModuleType, name: str, num_classes: int | None, mean: Any = None, std: Any = None) -> nn.Module:
    """timm's ``name`` without weights, behind its own normalisation (or ``mean``/``std``)."""
    net = timm.create_model(name, pretrained=False, **({"num_classes": num_classes} if num_classes else {}))
    cfg = getattr(net, "pretrained_cfg", None) or {}
    mean = mean or cfg.get("mean") or DATASET_STATS["imagenet"][0]
    return Normalize(net, mean, std or cfg.get("std") or DATASET_STATS["imagenet"][1])


def build_hub_network(spec: str, num_classes: int | None = None, mean: Any = None, std: Any = None) -> nn.Module:
    """The untrained network of ``timm:NAME`` or ``robustbench:NAME``, for a robustlab model file trained from it
    (its weights then come from the file: nothing is downloaded, no weights folder is needed)."""
    kind, _, name = spec.partition(":")
    if kind == "timm":
        timm = _require("timm", spec)
        if not timm.is_model(name):
            raise RobustlabError(f"timm has no model {name!r}; this model file needs the timm it was saved with")
        return _timm_network(timm, name, num_classes, mean, std)
    model_dicts, benchmark_dataset, threat_model, _ = _robustbench_zoo()
    dataset, threat, model = robustbench_entry(name)
    return model_dicts[benchmark_dataset(dataset)][threat_model(threat)][model]["model"]()


def _head_size(obj: Any, timm: ModuleType, name: str) -> int | None:
    """The number of classes of a timm checkpoint, read from its classifier's weight (None if not found)."""
    state = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else {}
    head = timm.models.get_pretrained_cfg_value(name, "classifier") or "head"
    heads = [head] if isinstance(head, str) else list(head)
    for key in (f"{h}.weight" for h in heads):
        weight = state.get(key, state.get(f"module.{key}")) if isinstance(state, dict) else None
        if weight is not None and getattr(weight, "dim", lambda: 0)() >= 1:
            return int(weight.shape[0])
    return None


def _load_source(spec: str, request: ModelRequest) -> tuple[nn.Module, dict[str, Any] | None]:
    model = load_hub_model(spec, request.checkpoint, request.trust, request.num_classes)
    return model, hub_domain(spec)


HUB = ModelSource(_load_source, build=build_hub_network, loads_weights=True)  # weights from local files only
SOURCES.register("robustbench", HUB)
SOURCES.register("timm", HUB)

__all__ = [
    "build_hub_network",
    "hub_domain",
    "is_hub_spec",
    "load_hub_model",
    "load_robustbench",
    "load_timm",
    "robustbench_entry",
    "robustbench_weights",
]
