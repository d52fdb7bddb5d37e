"""The typed pieces of an evaluation report: one entry per eps, per-attack statistics, top-k statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from robustlab.eval.intervals import clopper_pearson
from robustlab.eval.metrics import per_class, topk_report
from robustlab.eval.result import EvalResult


def _keyed(values: dict[str, float]) -> dict[int, float]:
    return {int(k): v for k, v in values.items()}


@dataclass
class TopKStats:
    """Top-k ASR, top-k robust and clean accuracy per k, and interest class rank (ICR) statistics.

    Only samples attacked for that k are in an ASR denominator (see :func:`~robustlab.eval.metrics.topk_report`).
    """

    asr: dict[int, float]
    robust_accuracy: dict[int, float]
    clean_accuracy: dict[int, float]
    icr: dict[str, Any]  # mean, median, histogram (counts of rank 1..classes)
    scope: str | None = None  # "own" or "cumulative" (per attack); None for the worst case
    attacked: int | None = None
    intervals: dict[str, Any] | None = None  # 95 % Clopper-Pearson per rate and k, with the n's

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "asr": {str(k): v for k, v in self.asr.items()},
            "robust_accuracy": {str(k): v for k, v in self.robust_accuracy.items()},
            "clean_accuracy": {str(k): v for k, v in self.clean_accuracy.items()},
            "icr": self.icr,
        }
        if self.intervals is not None:
            out["intervals"] = self.intervals
        if self.scope is not None:
            out.update(scope=self.scope, attacked=self.attacked)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TopKStats:
        return cls(
            _keyed(d["asr"]), _keyed(d["robust_accuracy"]), _keyed(d["clean_accuracy"]), d["icr"],
            d.get("scope"), d.get("attacked"), d.get("intervals"),
        )  # fmt: skip


@dataclass
class AttackStats:
    """One attack's effect at one eps: robust accuracy after it (and all before it), samples, time, top-k."""

    robust_accuracy_after: float
    attacked: int
    broken: int
    seconds: float
    topk: TopKStats
    robust_accuracy_alone: float | None = None  # only when the attack ran on every sample
    robust_accuracy_after_ci: list[float] | None = None  # 95 % Clopper-Pearson over the entry's n
    forward_passes: int = 0  # images the attack ran forward through the model (all shards; 0 in older reports)
    backward_passes: int = 0  # images whose input gradient it took

    def to_dict(self) -> dict[str, Any]:
        out = {
            "robust_accuracy_after": self.robust_accuracy_after,
            "robust_accuracy_after_ci": self.robust_accuracy_after_ci, "attacked": self.attacked,
            "broken": self.broken, "seconds": self.seconds, "topk": self.topk.to_dict(),
            "forward_passes": self.forward_passes, "backward_passes": self.backward_passes,
        }  # fmt: skip
        if self.robust_accuracy_alone is not None:
            out["robust_accuracy_alone"] = self.robust_accuracy_alone
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackStats:
        return cls(
            d["robust_accuracy_after"], d["attacked"], d["broken"], d["seconds"], TopKStats.from_dict(d["topk"]),
            d.get("robust_accuracy_alone"), d.get("robust_accuracy_after_ci"), d.get("forward_passes", 0),
            d.get("backward_passes", 0),
        )  # fmt: skip


@dataclass
class EpsEntry:
    """Everything measured at one eps. ``robust_accuracy`` is top-1 correctness at the adversarial points (per
    sample: clean-correct and no attack made it wrong), whatever criterion the attacks optimised."""

    eps: float
    n: int
    clean_accuracy: float
    robust_accuracy: float
    attack_success_rate: float
    attacks: dict[str, AttackStats]
    worst_case_topk: TopKStats
    topk_ks: list[int]
    topk_scope: str
    nonfinite: list[int] = field(default_factory=list)  # samples with NaN/inf logits: never correct or robust
    intervals: dict[str, list[float]] = field(default_factory=dict)  # 95 % Clopper-Pearson of clean and robust
    per_class: dict[str, list[int]] = field(default_factory=dict)  # counts per class: n, clean_correct, robust
    carried: int = 0  # nested eps: samples broken at a smaller eps (counted broken here, not attacked)
    clean_passes: int = 0  # images the evaluator ran forward itself (clean predictions, judging); 0 in older reports

    @classmethod
    def from_result(cls, eps: float, result: EvalResult, ks: Sequence[int] | None = None) -> EpsEntry:
        summary, topk = result.summary(), topk_report(result, ks)
        n, robust = result.n, result.robust
        ci = {
            "clean_accuracy": list(clopper_pearson(int(result.clean_correct.sum()), n)),
            "robust_accuracy": list(clopper_pearson(int(robust.sum()), n)),
        }
        attacks = {}
        for name, s in summary["attacks"].items():
            alone = None
            if bool(result.attacked[name].all()):  # the attack ran on every sample: its own robust accuracy
                alone = (result.clean_correct & ~result.broken[name]).float().mean().item()
            attacks[name] = AttackStats(
                s["robust_accuracy_after"], s["attacked"], s["broken"], s["seconds"],
                TopKStats.from_dict(topk["attacks"][name]), alone,
                list(clopper_pearson(int(result.robust_after[name].sum()), n)), s["forward_passes"],
                s["backward_passes"],
            )  # fmt: skip
        return cls(
            eps, summary["n"], summary["clean_accuracy"], summary["robust_accuracy"],
            summary["attack_success_rate"], attacks, TopKStats.from_dict(topk["worst_case"]), topk["ks"],
            topk["scope"], summary["nonfinite"], ci,
            per_class(result.labels, result.clean_correct, robust, result.clean_logits.shape[1]),
            int(result.carried.sum()) if result.carried is not None else 0, result.clean_passes,
        )  # fmt: skip

    def weakest_classes(self, names: Sequence[str], count: int = 3) -> list[tuple[str, float, int]]:
        """The ``count`` classes with the lowest robust accuracy: ``(name, robust accuracy, samples)``."""
        rows = [
            (names[c], r / n, n) for c, (r, n) in enumerate(zip(self.per_class["robust"], self.per_class["n"])) if n
        ]
        return sorted(rows, key=lambda row: row[1])[:count]

    def to_dict(self) -> dict[str, Any]:
        return {
            "eps": self.eps, "n": self.n, "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy, "attack_success_rate": self.attack_success_rate,
            "nonfinite": self.nonfinite, "attacks": {a: s.to_dict() for a, s in self.attacks.items()},
            "worst_case_topk": self.worst_case_topk.to_dict(), "topk_ks": self.topk_ks, "topk_scope": self.topk_scope,
            "intervals": self.intervals, "per_class": self.per_class, "carried": self.carried,
            "clean_passes": self.clean_passes,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpsEntry:
        return cls(
            d["eps"], d["n"], d["clean_accuracy"], d["robust_accuracy"], d["attack_success_rate"],
            {a: AttackStats.from_dict(s) for a, s in d["attacks"].items()}, TopKStats.from_dict(d["worst_case_topk"]),
            list(d["topk_ks"]), d["topk_scope"], list(d.get("nonfinite", [])), d.get("intervals", {}),
            d.get("per_class", {}), d.get("carried", 0), d.get("clean_passes", 0),
        )  # fmt: skip


__all__ = ["AttackStats", "EpsEntry", "TopKStats"]
