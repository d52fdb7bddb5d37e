"""A transfer evaluation in one call: ``run_transfer(sources, targets, data, TransferConfig(...), out)`` does what
``robustlab transfer`` does -- surrogates (single models or ensembles) craft, targets judge, a top-k ASR matrix,
``report.json``/``report.md``/heat maps/curves and, if asked, the adversarial examples."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from robustlab.attacks import Ensemble
from robustlab.errors import RobustlabError
from robustlab.eval.configs import TransferConfig
from robustlab.eval.sources import (
    Data,
    DataSource,
    ModelSource,
    data_fingerprint,
    model_fingerprint,
    probe,
    resolve_data,
)
from robustlab.eval.transfer import TransferResult, plot_heatmaps, plot_topk_curves, transfer_matrix
from robustlab.executor import Run, execute

TRANSFER_WRITES = ("heatmap.png", "topk_curves.png")  # what a transfer run writes into --out beside its report


Model = nn.Module | str | ModelSource


def load_models(
    sources: Sequence[Model | Sequence[Model]] | Mapping[str, nn.Module], targets: Sequence[Model] | Mapping,
    device: torch.device,
) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:  # fmt: skip
    """``({surrogate name: model}, {target name: model})``; a source given as several models is their ensemble
    (named ``a+b``); each spec is loaded once."""
    loaded: dict[str, nn.Module] = {}

    def one(model: Model) -> tuple[str, nn.Module]:
        if isinstance(model, nn.Module):
            return type(model).__name__, model
        spec = ModelSource(model) if isinstance(model, str) else model
        if spec.spec not in loaded:
            loaded[spec.spec] = spec.load(device)
        return spec.spec, loaded[spec.spec]

    def group(source: Model | Sequence[Model]) -> tuple[str, nn.Module]:
        if isinstance(source, (str, nn.Module, ModelSource)):
            return one(source)
        members = [one(m) for m in source]
        if not members:
            raise RobustlabError("--source is empty; give a model spec such as zoo:fmnist-cnn")
        if len(members) == 1:
            return members[0]
        return "+".join(n for n, _ in members), Ensemble([m for _, m in members])

    surrogates = dict(sources) if isinstance(sources, Mapping) else dict(group(s) for s in sources)
    judged = dict(targets) if isinstance(targets, Mapping) else dict(one(t) for t in targets)
    if not judged:
        raise RobustlabError("--targets is empty; give model specs such as zoo:fmnist-cnn-s1,zoo:fmnist-mlp")
    return surrogates, judged


def _models_fingerprint(sources: Sequence | Mapping, targets: Sequence | Mapping) -> dict[str, Any]:
    """The surrogates' and targets' part of a run's fingerprint (:func:`model_fingerprint` of each, an ensemble's
    members in a list), without loading them."""

    def each(models: Any) -> Any:
        if isinstance(models, Mapping):
            return {name: model_fingerprint(m) for name, m in models.items()}
        return [model_fingerprint(m) if isinstance(m, (str, nn.Module, ModelSource)) else each(m) for m in models]

    return {"sources": each(sources), "targets": each(targets)}


def run_transfer(
    sources: Sequence[Model | Sequence[Model]] | Mapping[str, nn.Module],
    targets: Sequence[Model] | Mapping[str, nn.Module],
    dataset: Data | str | DataSource,
    config: TransferConfig,
    out: str | os.PathLike | None = None,
    *,
    save_adv: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
    device: str | torch.device | None = None,
    command_line: str | None = None,
) -> TransferResult:
    """Craft every attack on every surrogate, judge every target; with ``out`` (one run per folder, locked while it
    runs, an earlier run replaced only with ``overwrite``), write the report and plots there. Outputs, attacks,
    models and data are checked before any attack runs."""
    threat, attacks = config.threat, config.build()

    def build(run: Run) -> tuple[dict[str, nn.Module], dict[str, nn.Module], Data, str, str]:
        surrogates, judged = load_models(sources, targets, run.device)
        data, name, split, _ = resolve_data(dataset, digest=False)
        for model in [*surrogates.values(), *judged.values()]:
            probe(model, data, run.device, config.topk)
        return surrogates, judged, data, name, split

    def work(run: Run, built: tuple[dict[str, nn.Module], dict[str, nn.Module], Data, str, str]) -> TransferResult:
        surrogates, judged, data, name, split = built
        result = transfer_matrix(
            surrogates, judged, attacks, threat, data, config.topk, config.batch_size, progress=progress,
            device=run.device,
        )  # fmt: skip
        result.dataset, result.split = name, split
        if run.path is not None:
            result.files.update(heatmap=str(run.path / "heatmap.png"), topk_curves=str(run.path / "topk_curves.png"))
            plot_heatmaps(result, result.files["heatmap"])
            plot_topk_curves(result, result.files["topk_curves"])
        if run.export is not None:
            adv = {"x_adv": result.x_adv, "y": result.labels, "index": torch.arange(result.n)}
            result.files["adversarial_examples"] = run.save_export(adv)
        return result

    fingerprint = None
    if out is not None:  # checked before anything loads; taken once models and data have loaded
        fingerprint = {**_models_fingerprint(sources, targets), **data_fingerprint(dataset),
                       **config.fingerprint()}  # fmt: skip
    return execute(
        "transfer", build, work, out, fingerprint=fingerprint, overwrite=overwrite, resumable=False,
        config={**config.settings(exclude=("attacks", "extra")), **config.extra},
        export=("--save-adv", save_adv, TRANSFER_WRITES), device=device, command_line=command_line,
    )  # fmt: skip


__all__ = ["TransferConfig", "load_models", "run_transfer"]
