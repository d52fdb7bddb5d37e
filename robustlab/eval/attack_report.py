"""The typed report of an attack run (``robustlab attack``, :func:`~robustlab.eval.run_attack`): clean and robust
accuracy, attack success rate with 95 % intervals, top-k statistics, cost; it renders ``report.md`` and reads
itself back from ``report.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from robustlab.eval.entries import TopKStats
from robustlab.eval.intervals import format_interval
from robustlab.io import markdown_table
from robustlab.reports.kinds import Figure, from_fields, register_report


@register_report
@dataclass
class AttackReport:
    """What ``robustlab attack`` reports. ``robust_accuracy`` is top-1 at the adversarial points; for a targeted
    or top-k attack, ``criterion_success_rate`` is the share of clean-correct samples where its own goal held."""

    kind: ClassVar[str] = "attack"
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
        return {"kind": self.kind, **asdict(self), "topk": self.topk.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackReport:
        """The report of a ``report.json`` (:meth:`to_dict`), fields read by name."""
        return from_fields(cls, d, topk=TopKStats.from_dict(d["topk"]))

    def headline(self) -> dict[str, Figure]:
        """Clean and robust accuracy and the attack success rate at the threat's eps, with their 95 % intervals."""
        ci, eps = self.intervals, f"{self.threat['norm']} eps {self.threat['eps']:.4g}"
        return {
            "clean accuracy": (self.clean_accuracy, ci.get("clean_accuracy")),
            f"robust accuracy, {eps}": (self.robust_accuracy, ci.get("robust_accuracy")),
            f"{self.name} attack success rate, {eps}": (self.attack_success_rate, ci.get("attack_success_rate")),
        }

    def page_title(self) -> str:
        model, dataset = self.config.get("model"), self.config.get("dataset")
        where = f" on {model}" + (f" ({dataset})" if dataset else "") if model else ""
        return f"Attack {self.name}{where} (eps {self.threat.get('eps')})"

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


__all__ = ["AttackReport"]
