"""One attack over a dataset in one call: ``run_attack(model, data, AttackConfig(...), out)`` does what
``robustlab attack`` does -- clean and (top-1) robust accuracy, attack success rate, top-k statistics, the
report and, if asked, the adversarial examples -- with every output path checked before the attack runs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustlab.attacks import Targeted, attack_from_spec
from robustlab.attacks.runtime import runtime_of
from robustlab.errors import RobustlabError
from robustlab.eval.attack_report import AttackReport
from robustlab.eval.evaluator import Evaluator
from robustlab.eval.gallery import save_gallery
from robustlab.eval.intervals import clopper_pearson
from robustlab.eval.metrics import default_topk, topk_metrics
from robustlab.eval.report import TopKStats
from robustlab.eval.sources import (
    Data,
    DataSource,
    ModelSource,
    attack_keys,
    data_fingerprint,
    model_fingerprint,
    probe,
    resolve_data,
    resolve_model,
    settings,
)
from robustlab.executor import Run, execute
from robustlab.threat import ThreatModel


@dataclass(frozen=True)
class AttackConfig:
    """One attack (any spec, e.g. ``pgd``, ``topk(k=3)``, ``autoattack``; or an attack object) at one threat model.

    ``steps``, ``step_size``, ``loss`` and ``restarts`` given here are options of that attack (an attack that does
    not take one refuses it); ``target`` makes it targeted (a class index, ``random`` or ``least-likely``).
    """

    attack: Any
    eps: float
    norm: str = "linf"
    bounds: tuple[float, float] = (0.0, 1.0)
    target: str | None = None
    topk: tuple[int, ...] | None = None
    batch_size: int = 256
    seed: int = 0
    steps: int | None = None
    step_size: float | None = None
    loss: str | None = None
    restarts: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in report.json's config, changes nothing

    def threat(self) -> ThreatModel:
        return ThreatModel(self.norm, self.eps, self.bounds)

    def build_attack(self) -> Any:
        """The attack object, wrapped in :class:`~robustlab.attacks.Targeted` when a target rule is given."""
        attack = self.attack
        if isinstance(attack, str):
            options = {k: getattr(self, k) for k in ("steps", "step_size", "loss", "restarts")}
            try:
                attack = attack_from_spec(with_options(attack, options), seed=self.seed)
            except TypeError as exc:  # e.g. --steps for autoattack
                given = ", ".join(f"--{k.replace('_', '-')}" for k, v in options.items() if v is not None)
                raise RobustlabError(f"attack {attack!r} does not take {given or 'these options'} ({exc})") from None
        return Targeted(attack, self.target, seed=self.seed) if self.target else attack

    def fingerprint(self, runner: Any) -> dict[str, Any]:
        """Every setting that changes the result, with the attack ``runner`` (built by :meth:`build_attack`)."""
        attack = self.attack if isinstance(self.attack, str) else attack_keys({runner.name: runner}, as_specs=False)
        return {**settings(self, exclude=("attack", "extra")), "attack": attack}


def with_options(spec: str, options: dict[str, Any]) -> str:
    """``spec`` with ``options`` (None: not given) as options in parentheses; options already in the spec win."""
    given = ",".join(f"{k}={v!r}" for k, v in options.items() if v is not None)
    if not given:
        return spec
    head, paren, rest = spec.strip().partition("(")
    return f"{head}({given},{rest}" if paren else f"{head}({given})"


def used_config(attack: Any, threat: ThreatModel) -> dict[str, Any]:
    """The attack's configuration with the step size it actually used at this threat (not ``None`` for a default)."""
    config = attack.config()
    inner = getattr(attack, "attack", attack)  # Targeted wraps the attack it steers
    if config.get("step_size") is None and hasattr(inner, "resolve_step_size"):
        config["step_size"] = inner.resolve_step_size(threat)
    if runtime_of(attack):
        config["runtime"] = runtime_of(attack)  # the memory format and precision it ran with
    return config


def run_attack(
    model: nn.Module | str | ModelSource,
    dataset: Data | str | DataSource,
    config: AttackConfig,
    out: str | os.PathLike | None = None,
    *,
    save_adv: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
    device: str | torch.device | None = None,
    command_line: str | None = None,
) -> AttackReport:
    """Attack every sample of ``dataset``; with ``out`` (one run per folder, locked while it runs, an earlier run
    replaced only with ``overwrite``), write ``out/report.json`` and ``report.md``; with ``save_adv``, the
    adversarial examples ``{"x_adv", "y", "index"}``. Outputs, attack, model and data are checked first."""
    threat, runner = config.threat(), config.build_attack()

    def build(run: Run) -> tuple[nn.Module, Data, str, list[int]]:
        module, _, _ = resolve_model(model, run.device)
        data, data_name, _, _ = resolve_data(dataset, digest=False)
        num_classes = probe(module, data, run.device, config.topk)
        return module, data, data_name, list(config.topk or default_topk(num_classes))

    def work(run: Run, built: tuple[nn.Module, Data, str, list[int]]) -> AttackReport:
        module, data, data_name, ks = built
        evaluator = Evaluator(
            {runner.name: runner}, threat, batch_size=config.batch_size, only_robust=False,
            keep_adv=run.export is not None, progress=progress, device=run.device,
        )  # fmt: skip
        result = evaluator.run(module, data)
        report = attack_report(runner, threat, result, ks)
        if run.path is not None:
            report.files.update(save_gallery(run.path, module, data, runner, threat, result, device=run.device,
                                             dataset_name=data_name))  # fmt: skip
        if run.export is not None:
            adv = {"x_adv": result.x_adv, "y": result.labels, "index": torch.arange(result.n)}
            report.files["adversarial_examples"] = run.save_export(adv)
        return report

    fingerprint = None
    if out is not None:  # checked before anything loads; taken once model and data have loaded
        fingerprint = {**model_fingerprint(model), **data_fingerprint(dataset), **config.fingerprint(runner)}
    return execute(
        "attack", build, work, out, fingerprint=fingerprint, overwrite=overwrite, resumable=False,
        config={**settings(config, exclude=("attack", "extra")), **config.extra},
        export=("--save-adv", save_adv, ("gallery.pt",)), device=device, command_line=command_line,
    )  # fmt: skip


def attack_report(runner: Any, threat: ThreatModel, result: Any, ks: list[int]) -> AttackReport:
    """The :class:`AttackReport` of one attack's :class:`~robustlab.eval.EvalResult`."""
    summary = result.summary()
    correct = max(1, int(result.clean_correct.sum()))
    return AttackReport(
        runner.name, summary["n"], summary["clean_accuracy"], summary["robust_accuracy"],
        summary["attack_success_rate"], int(result.criterion[runner.name].sum()) / correct,
        TopKStats.from_dict(topk_metrics(result.adv_logits[runner.name], result.labels, result.clean_logits, ks)),
        used_config(runner, threat), threat.to_dict(), summary["attacks"][runner.name]["seconds"],
        summary["nonfinite"],
        intervals={
            "clean_accuracy": list(clopper_pearson(int(result.clean_correct.sum()), result.n)),
            "robust_accuracy": list(clopper_pearson(int(result.robust.sum()), result.n)),
            "attack_success_rate": list(
                clopper_pearson(int((result.clean_correct & ~result.robust).sum()), int(result.clean_correct.sum()))
            ),
        },
        forward_passes=result.forward_passes[runner.name], backward_passes=result.backward_passes[runner.name],
    )  # fmt: skip


__all__ = ["AttackConfig", "AttackReport", "run_attack", "with_options"]
