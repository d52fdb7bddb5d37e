"""One training run in a run folder, shared by every training command (``train``, ``ssl``, ``deacl``, ``pseudo-at``,
``finetune``), through the one executor (:mod:`robustlab.executor`: torchrun's process group, the run folder and its
``--resume`` check against the config's fingerprint, the report files): build what is trained on the run's device,
check that the model fits the data, train through the one loop, write ``model.pt`` (a model file naming its
architecture, classes and normalisation) and evaluate through the evaluator. :func:`run_training` is the call.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from robustlab.errors import RobustlabError
from robustlab.eval.report import EvalReport
from robustlab.executor import Run, execute
from robustlab.io import RUN_FILE
from robustlab.models.mode import temporary_mode
from robustlab.training.context import Callback
from robustlab.training.loop import TrainConfig, TrainResult, train
from robustlab.training.method import Method
from robustlab.training.report import FinalEvaluation, TrainReport, plot_curves

FILE_SETTINGS = ("model", "checkpoint", "teacher", "encoder")  # settings that name files a run starts from
# what a training run writes into its folder (an --export file must not take one of these names)
RUN_WRITES = ("model.pt", "last.pt", "best.pt", "history.json", "metrics.jsonl", "tensorboard", "curves.png",
              "report.json", "report.md", "report.html")  # fmt: skip


@dataclass
class TrainingSetup:
    """What a run trains, built on the run's device by its config's ``build`` (:class:`TrainingRun`)."""

    model: nn.Module
    method: Method
    train_set: Dataset
    config: TrainConfig
    callbacks: list[Callback] = field(default_factory=list)
    evaluation: FinalEvaluation | None = None  # the final evaluation (None: none)
    save_model: Callable[[Path], None] | None = None  # writes OUT/model.pt itself (default: the model file below)
    model_file: dict[str, Any] = field(default_factory=dict)  # arch, dataset, ...: what OUT/model.pt records
    saved: nn.Module | None = None  # the classifier OUT/model.pt holds (default: model)
    curves_title: str | None = None  # plot OUT/curves.png (the CO monitor's accuracies) under this title
    summary_keys: tuple[str, ...] = ()  # last-epoch stats for the summary table
    fits: tuple[nn.Module, ...] = ()  # further models (teachers) that must take the training images
    num_classes: int | None = None  # the model's outputs must match this many classes (supervised training)
    method_info: dict[str, Any] = field(default_factory=dict)  # report["method"]: method.config() plus these
    report: dict[str, Any] = field(default_factory=dict)  # extra report fields (dataset, model, ...)
    banner: str = ""  # one line saying what is trained, for the CLI


def resolve_device(name: str | torch.device) -> torch.device:
    """``name`` as a torch device, or one error line (no CUDA, unknown name)."""
    name = str(name)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RobustlabError(f"--device {name} asked for, but no CUDA device is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise RobustlabError(f"unknown device {name!r}; use cpu or cuda") from None


def training_fingerprint(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a ``--resume`` must match, with the content digest of every file the run starts from."""
    from robustlab.io import file_digest

    keys = dict(sorted(settings.items()))
    for name in FILE_SETTINGS:
        value = keys.get(name)
        if isinstance(value, str) and os.path.isfile(value):
            keys[f"{name}_sha256"] = file_digest(value)
        elif isinstance(value, str) and os.path.isfile(os.path.join(value, "model.pt")):
            keys[f"{name}_sha256"] = file_digest(os.path.join(value, "model.pt"))
    return keys


def check_fits(model: nn.Module, train_set: Dataset, device: torch.device, num_classes: int | None = None) -> None:
    """One forward pass of a training image (eval mode, no gradients, the model's modes restored): a model built
    for other images (channels, size) or another number of classes is refused before any work is done."""
    x = train_set[0][0]
    try:
        with torch.no_grad(), temporary_mode(model, training=False):
            out = model(x.unsqueeze(0).to(device))
    except Exception as exc:  # shape errors surface as RuntimeError, ValueError, ...
        cause = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise RobustlabError(
            f"the model does not take this dataset's images (shape {tuple(x.shape)}): {cause}; use a model built "
            "for this dataset"
        ) from None
    if num_classes is not None and out.dim() == 2 and out.shape[1] != num_classes:
        raise RobustlabError(
            f"the model has {out.shape[1]} outputs but the dataset {num_classes} classes; use a model built for it"
        )


def _finish_run(setup: TrainingSetup, result: TrainResult, run: Run) -> EvalReport | None:
    """Rank 0 after training: model.pt (a self-describing model file; the export a state dict), curves, the final
    evaluation."""
    from robustlab.models import save_model

    out = run.path
    if setup.save_model is not None:
        setup.save_model(out / "model.pt")
    else:
        shape = tuple(setup.train_set[0][0].shape)
        info = {"arch": None, **setup.model_file}
        save_model(out / "model.pt", setup.saved or setup.model, input_shape=shape, command=run.command_line, **info)
    if run.export is not None:
        run.save_export(setup.model.state_dict())
    if setup.curves_title is not None and result.history:
        plot_curves(result.history, out / "curves.png", title=setup.curves_title)
    return setup.evaluation.run(setup.model, run.device) if setup.evaluation is not None else None


class TrainingRun(Protocol):
    """What :func:`run_training` runs: a training kind's config (:mod:`robustlab.recipes`)."""

    kind: ClassVar[str]
    trust_checkpoint: bool
    export: str | None  # also save the final state dict here

    def fingerprint(self) -> dict[str, Any]: ...

    def build(self, device: torch.device) -> TrainingSetup: ...


def check_resumable(out: str | os.PathLike, kind: str) -> None:
    """Refuse, in one line, to resume a training run whose run.json records its settings as the command-line
    arguments of robustlab before the typed configs (no ``threat`` among them): they cannot be compared."""
    path = Path(out) / RUN_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # no record, or a damaged one: the run folder's own checks say so
    previous = saved.get("fingerprint") if isinstance(saved, dict) else None
    if saved.get("kind") == kind and isinstance(previous, dict) and "threat" not in previous:
        raise RobustlabError(
            f"{out} holds a '{kind}' run of an older robustlab (its settings are recorded as command-line arguments, "
            "not as a training config), so --resume cannot check them; start it over with --overwrite or use "
            "another --out"
        )


def run_training(
    config: TrainingRun,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    command_line: str | None = None,
    on_start: Callable[[TrainingSetup], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainReport | None:
    """Run ``config``'s training in the run folder ``out`` and return its report (``None`` on ranks > 0).

    ``config.kind`` and ``config.fingerprint()`` are the run's identity: ``resume`` continues only a run of the same
    kind and fingerprint (one error line names the fields that differ), and a folder holding a run is never written
    over without ``overwrite``. ``on_start`` and ``on_epoch`` are called on rank 0 (e.g. to print).
    """
    kind, settings = config.kind, config.fingerprint()
    if resume:
        check_resumable(out, kind)

    def build(run: Run) -> TrainingSetup:
        setup = config.build(run.device)
        for model in (setup.model, *setup.fits):  # refused before the folder is taken
            check_fits(model, setup.train_set, run.device, setup.num_classes if model is setup.model else None)
        return setup

    def work(run: Run, setup: TrainingSetup) -> TrainReport | None:
        if on_start is not None and run.shard.is_main:
            on_start(setup)
        result = train(setup.model, setup.method, setup.train_set, setup.config, run.path, resume=resume,
                       callbacks=setup.callbacks, device=run.device, on_epoch=on_epoch,
                       trust_checkpoint=config.trust_checkpoint)  # fmt: skip
        if not run.shard.is_main:
            return None
        evaluation = _finish_run(setup, result, run)
        return TrainReport(
            kind, {**setup.method.config(), **setup.method_info}, asdict(setup.config), result.history,
            result.epochs_done, result.best_epoch, result.stop_reason, result.train_seconds, evaluation,
            setup.summary_keys,
            {**setup.report, "co_events": [e for c in setup.callbacks for e in c.events],
             "train_samples": len(setup.train_set), "world_size": run.shard.world, "settings": settings},
        )  # fmt: skip

    return execute(kind, build, work, out, fingerprint=settings, resume=resume, overwrite=overwrite, distributed=True,
                   export=("--export", config.export, RUN_WRITES), device=resolve_device(device),
                   command_line=command_line)  # fmt: skip


__all__ = ["TrainingRun", "TrainingSetup", "check_fits", "check_resumable", "resolve_device", "run_training",
           "training_fingerprint"]
