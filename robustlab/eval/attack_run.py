"""One attack over a dataset in one call: ``run_attack(model, data, AttackConfig(...), out)`` does what
``robustlab attack`` does -- clean and (top-1) robust accuracy, attack success rate, top-k statistics, the
report and, if asked, the adversarial examples -- with every output path checked before the attack runs."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from robustlab.attacks.protocol import as_attack
from robustlab.attacks.runtime import runtime_of
from robustlab.eval.attack_report import AttackReport
from robustlab.eval.configs import AttackConfig
from robustlab.eval.evaluator import Evaluator
from robustlab.eval.gallery import save_gallery
from robustlab.eval.intervals import clopper_pearson
from robustlab.eval.metrics import default_topk, topk_metrics
from robustlab.eval.report import TopKStats
from robustlab.eval.sources import (
    Data,
    DataSource,
    ModelSource,
    data_fingerprint,
    model_fingerprint,
    probe,
    resolve_data,
    resolve_model,
)
from robustlab.executor import Run, execute
from robustlab.threat import ThreatModel


def used_config(attack: Any, threat: ThreatModel) -> dict[str, Any]:
    """The attack's configuration with the step size it actually used at this threat (not ``None`` for a default)."""
    config, step_size = attack.config(), as_attack(attack).resolve_step_size(threat)  # a wrapper's: its inner one's
    if config.get("step_size") is None and step_size is not None:
        config["step_size"] = step_size
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
    threat, runner = config.threat, config.build()

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
        fingerprint = {**model_fingerprint(model), **data_fingerprint(dataset), **config.fingerprint()}
    return execute(
        "attack", build, work, out, fingerprint=fingerprint, overwrite=overwrite, resumable=False,
        config={**config.settings(exclude=("attack", "extra")), **config.extra},
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


__all__ = ["AttackConfig", "AttackReport", "attack_report", "run_attack"]
