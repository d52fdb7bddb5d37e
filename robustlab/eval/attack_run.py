"""One attack over a dataset in one call: ``run_attack(model, data, AttackConfig(...), out)`` does what
``robustlab attack`` does -- clean and (top-1) robust accuracy, attack success rate, top-k statistics, the
report and, if asked, the adversarial examples -- with every output path checked before the attack runs."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from robustlab.attacks import Targeted, attack_from_spec
from robustlab.attacks.runtime import runtime_of
from robustlab.errors import RobustlabError
from robustlab.eval.evaluator import Evaluator
from robustlab.eval.gallery import save_gallery
from robustlab.eval.intervals import clopper_pearson, format_interval
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
from robustlab.io import atomic_torch_save, environment, markdown_table, write_report
from robustlab.reports.html import HTML_FILE, write_html
from robustlab.runs import RunFolder, check_not_in_run, check_writable_file
from robustlab.threat import ThreatModel

ATTACK_WRITES = ("report.json", "report.md", HTML_FILE, "gallery.pt")  # what an attack run writes into --out


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


@dataclass
class AttackReport:
    """What ``robustlab attack`` reports. ``robust_accuracy`` is top-1 at the adversarial points; for a targeted
    or top-k attack, ``criterion_success_rate`` is the share of clean-correct samples where its own goal held."""

    name: str
    n: int
    clean_accuracy: float
    robust_accuracy: float
    attack_success_rate: float
    criterion_success_rate: float
    topk: TopKStats
    attack: dict[str, Any]
    threat: dict[str, Any]
    seconds: float
    nonfinite: list[int] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    intervals: dict[str, list[float]] = field(default_factory=dict)  # 95 % Clopper-Pearson: clean, robust, ASR
    forward_passes: int = 0  # images the attack ran forward through the model (0: a report from before counting)
    backward_passes: int = 0  # images whose input gradient the attack took

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["topk"] = self.topk.to_dict()
        return d

    def rows(self) -> list[list[Any]]:
        """The table the CLI prints: metric, value."""
        return [
            ["clean accuracy", f"{format_interval(self.clean_accuracy, self.intervals.get('clean_accuracy'), 2)} %"],
            [
                "robust accuracy (top-1)",
                f"{format_interval(self.robust_accuracy, self.intervals.get('robust_accuracy'), 2)} %",
            ],
            [
                "attack success rate",
                f"{format_interval(self.attack_success_rate, self.intervals.get('attack_success_rate'), 2)} %",
            ],
            *(
                [["the attack's own goal reached (target, top-k)", f"{100 * self.criterion_success_rate:.2f} %"]]
                if self.criterion_success_rate != self.attack_success_rate
                else []
            ),
            *[[f"top-{k} ASR", f"{100 * asr:.2f} %"] for k, asr in self.topk.asr.items()],
            ["interest class rank (mean / median)", f"{self.topk.icr['mean']:.2f} / {self.topk.icr['median']:.0f}"],
            *([["samples with NaN/inf logits", len(self.nonfinite)]] if self.nonfinite else []),
            ["samples", self.n],
            ["attack time", f"{self.seconds:.2f} s"],
            *([["forward / backward passes (images)", f"{self.forward_passes} / {self.backward_passes}"]]
              if self.forward_passes else []),
        ]

    def title(self) -> str:
        """``pgd on zoo:fmnist-cnn (fashion-mnist), linf eps 0.1``: what was attacked, with what (the model and data
        are named where the run was given them by name)."""
        model, data = self.config.get("model"), self.config.get("dataset")
        where = f" on {model}" + (f" ({data})" if data else "") if isinstance(model, str) else ""
        return f"{self.name}{where}, {self.threat.get('norm')} eps {self.threat.get('eps', 0):.4g}"

    def to_markdown(self, header: bool = True) -> str:
        """The results table, under a title naming the model and the attack (``header=False``: the table alone)."""
        table = markdown_table(["metric", "value"], self.rows())
        return f"# Attack {self.title()}\n\n{table}" if header else table


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
    started = time.time()
    device = torch.device(device) if device is not None else torch.device("cpu")
    threat, runner = config.threat(), config.build_attack()
    folder: RunFolder | contextlib.AbstractContextManager = contextlib.nullcontext()
    if out is not None:  # checked now; taken once model and data have loaded (overwrite builds beside it)
        fingerprint = {**model_fingerprint(model), **data_fingerprint(dataset), **config.fingerprint(runner)}
        folder = RunFolder(out, "attack", fingerprint, overwrite=overwrite, resumable=False)
        folder.precheck()
    if save_adv is not None:
        check_not_in_run(save_adv, out, "--save-adv", ATTACK_WRITES)
        check_writable_file(save_adv, "--save-adv")
    module, _, _ = resolve_model(model, device)
    data, data_name, _, _ = resolve_data(dataset, digest=False)
    num_classes = probe(module, data, device, config.topk)
    ks = list(config.topk or default_topk(num_classes))
    with folder:  # a bad model, dataset or top-k has been refused before an earlier run is replaced
        evaluator = Evaluator(
            {runner.name: runner}, threat, batch_size=config.batch_size, only_robust=False,
            keep_adv=save_adv is not None, progress=progress, device=device,
        )  # fmt: skip
        result = evaluator.run(module, data)
        summary = result.summary()
        correct = max(1, int(result.clean_correct.sum()))
        report = AttackReport(
            runner.name, summary["n"], summary["clean_accuracy"], summary["robust_accuracy"],
            summary["attack_success_rate"], int(result.criterion[runner.name].sum()) / correct,
            TopKStats.from_dict(topk_metrics(result.adv_logits[runner.name], result.labels, result.clean_logits, ks)),
            used_config(runner, threat), threat.to_dict(), summary["attacks"][runner.name]["seconds"],
            summary["nonfinite"],
            config={**settings(config, exclude=("attack", "extra")), **config.extra},
            wall_time_s=round(time.time() - started, 3), environment=environment(command_line),
            intervals={
                "clean_accuracy": list(clopper_pearson(int(result.clean_correct.sum()), result.n)),
                "robust_accuracy": list(clopper_pearson(int(result.robust.sum()), result.n)),
                "attack_success_rate": list(
                    clopper_pearson(int((result.clean_correct & ~result.robust).sum()), int(result.clean_correct.sum()))
                ),
            },
            forward_passes=result.forward_passes[runner.name], backward_passes=result.backward_passes[runner.name],
        )  # fmt: skip
        if isinstance(folder, RunFolder):  # written into folder.path (out, or its staging folder)
            gallery = save_gallery(folder.path, module, data, runner, threat, result, device=device,
                                   dataset_name=data_name)  # fmt: skip
            report.files.update(folder.final(gallery))
            report.files["html"] = os.path.join(out, HTML_FILE)
            report.files.update(folder.final(write_report(folder.path, report.to_dict(), report.to_markdown() + "\n")))
            write_html(folder.path)
        if save_adv is not None:
            adv = {"x_adv": result.x_adv, "y": result.labels, "index": torch.arange(result.n)}
            atomic_torch_save(adv, folder.inside(save_adv) if isinstance(folder, RunFolder) else save_adv)
            report.files["adversarial_examples"] = str(save_adv)
        return report


__all__ = ["AttackConfig", "AttackReport", "run_attack", "with_options"]
