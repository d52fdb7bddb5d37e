"""The typed report of an evaluation run: per-eps entries, per-attack statistics, top-k statistics, sanity flags.

:class:`EvalReport` renders itself (``report.json`` with the same keys as ever, ``report.md``, PNG plots) and reads
itself back (:meth:`EvalReport.load`). Every number is derived from :class:`~robustlab.eval.EvalResult` objects
(saved next to the report as ``results.pt``), so anyone can recompute it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError
from robustlab.eval.evaluator import EvalResult
from robustlab.eval.metrics import topk_report
from robustlab.eval.sanity import Flag
from robustlab.io import markdown_table, write_report
from robustlab.plots import save_png, subplots


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

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "asr": {str(k): v for k, v in self.asr.items()},
            "robust_accuracy": {str(k): v for k, v in self.robust_accuracy.items()},
            "clean_accuracy": {str(k): v for k, v in self.clean_accuracy.items()},
            "icr": self.icr,
        }
        if self.scope is not None:
            out.update(scope=self.scope, attacked=self.attacked)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TopKStats:
        return cls(
            _keyed(d["asr"]), _keyed(d["robust_accuracy"]), _keyed(d["clean_accuracy"]), d["icr"],
            d.get("scope"), d.get("attacked"),
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

    def to_dict(self) -> dict[str, Any]:
        out = {
            "robust_accuracy_after": self.robust_accuracy_after, "attacked": self.attacked, "broken": self.broken,
            "seconds": self.seconds, "topk": self.topk.to_dict(),
        }  # fmt: skip
        if self.robust_accuracy_alone is not None:
            out["robust_accuracy_alone"] = self.robust_accuracy_alone
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackStats:
        return cls(
            d["robust_accuracy_after"], d["attacked"], d["broken"], d["seconds"], TopKStats.from_dict(d["topk"]),
            d.get("robust_accuracy_alone"),
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

    @classmethod
    def from_result(cls, eps: float, result: EvalResult, ks: Sequence[int] | None = None) -> EpsEntry:
        summary, topk = result.summary(), topk_report(result, ks)
        attacks = {}
        for name, s in summary["attacks"].items():
            alone = None
            if bool(result.attacked[name].all()):  # the attack ran on every sample: its own robust accuracy
                alone = (result.clean_correct & ~result.success[name]).float().mean().item()
            attacks[name] = AttackStats(
                s["robust_accuracy_after"], s["attacked"], s["broken"], s["seconds"],
                TopKStats.from_dict(topk["attacks"][name]), alone,
            )  # fmt: skip
        return cls(
            eps, summary["n"], summary["clean_accuracy"], summary["robust_accuracy"],
            summary["attack_success_rate"], attacks, TopKStats.from_dict(topk["worst_case"]), topk["ks"],
            topk["scope"], summary["nonfinite"],
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "eps": self.eps, "n": self.n, "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy, "attack_success_rate": self.attack_success_rate,
            "nonfinite": self.nonfinite, "attacks": {a: s.to_dict() for a, s in self.attacks.items()},
            "worst_case_topk": self.worst_case_topk.to_dict(), "topk_ks": self.topk_ks, "topk_scope": self.topk_scope,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpsEntry:
        return cls(
            d["eps"], d["n"], d["clean_accuracy"], d["robust_accuracy"], d["attack_success_rate"],
            {a: AttackStats.from_dict(s) for a, s in d["attacks"].items()}, TopKStats.from_dict(d["worst_case_topk"]),
            list(d["topk_ks"]), d["topk_scope"], list(d.get("nonfinite", [])),
        )  # fmt: skip


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


@dataclass
class EvalReport:
    """What ``robustlab eval`` (and :func:`~robustlab.eval.run_evaluation`) reports; renders itself."""

    model: str
    dataset: str
    split: str
    n: int
    norm: str
    bounds: tuple[float, float]
    eps: list[float]
    only_robust: bool
    attacks: dict[str, dict[str, Any]]  # name -> the attack's config()
    seeds: dict[str, Any]
    results: list[EpsEntry]
    sanity: list[Flag] | None = None
    world_size: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    rank: int = 0  # under torchrun: only rank 0's report holds the results (not written to report.json)

    @property
    def sanity_fired(self) -> list[str]:
        return [f.name for f in self.sanity or [] if f.fired]

    @property
    def attack_names(self) -> list[str]:
        return list(self.attacks)

    def to_dict(self) -> dict[str, Any]:
        """``report.json``: the keys every reader of robustlab's reports knows."""
        return {
            "model": self.model, "dataset": self.dataset, "split": self.split, "n": self.n,
            "threat": {"norm": self.norm, "bounds": list(self.bounds)}, "eps": list(self.eps),
            "only_robust": self.only_robust, "attacks": self.attacks, "seeds": self.seeds,
            "results": [e.to_dict() for e in self.results],
            "sanity": None if self.sanity is None else [f.to_dict() for f in self.sanity],
            "sanity_fired": self.sanity_fired, "world_size": self.world_size, "config": self.config,
            "wall_time_s": self.wall_time_s, "environment": self.environment, "files": self.files,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        try:
            sanity = None if d.get("sanity") is None else [Flag(**f) for f in d["sanity"]]
            return cls(
                d["model"], d["dataset"], d["split"], d["n"], d["threat"]["norm"], tuple(d["threat"]["bounds"]),
                list(d["eps"]), d["only_robust"], d["attacks"], d.get("seeds", {}),
                [EpsEntry.from_dict(e) for e in d["results"]], sanity, d.get("world_size", 1), d.get("config", {}),
                d.get("wall_time_s", 0.0), d.get("environment", {}), d.get("files", {}),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise RobustlabError(f"not a robustlab evaluation report (missing or bad {exc})") from None

    @classmethod
    def load(cls, out: str | os.PathLike) -> EvalReport:
        """Read ``OUT/report.json`` back."""
        path = Path(out) / "report.json"
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise RobustlabError(f"cannot read {path} ({exc}); run robustlab eval first") from None

    def to_markdown(self) -> str:
        """``report.md``: robust accuracy per eps and attack, top-k statistics, time, sanity flags."""
        names, ks = self.attack_names, self.results[0].topk_ks if self.results else []
        protocol = "each only on the samples still robust (AutoAttack)" if self.only_robust else "each on all"
        lines = [
            f"# Robustness of `{self.model}` on {self.dataset} ({self.split}, n = {self.n})",
            "",
            f"Threat model: {self.norm}, bounds {list(self.bounds)}. Attacks run in order, {protocol}. Accuracies "
            "in %, top-1 at the adversarial points; an attack's column is the robust accuracy after it and all "
            "before it.",
            "",
        ]
        rows = [
            [f"{e.eps:.4g}", _pct(e.clean_accuracy), *[_pct(e.attacks[a].robust_accuracy_after) for a in names]]
            + [_pct(e.robust_accuracy)]
            for e in self.results
        ]
        lines += [markdown_table(["eps", "clean", *[f"after {a}" for a in names], "robust (worst case)"], rows), ""]
        for e in self.results:
            if e.nonfinite:
                lines += [f"At eps {e.eps:.4g}, {len(e.nonfinite)} sample(s) had NaN/inf logits (counted neither "
                          f"correct nor robust): {e.nonfinite[:20]}", ""]  # fmt: skip
        topk_rows = []
        for e in self.results:
            for a in [*names, "worst case"]:
                s = e.worst_case_topk if a == "worst case" else e.attacks[a].topk
                topk_rows.append(
                    [f"{e.eps:.4g}", a, *[_pct(s.asr[k]) for k in ks], *[_pct(s.robust_accuracy[k]) for k in ks]]
                    + [f"{s.icr['mean']:.2f}", f"{s.icr['median']:.0f}"]
                )
        headers = ["eps", "attack", *[f"top-{k} ASR" for k in ks], *[f"top-{k} robust" for k in ks], "ICR mean"]
        scope = (
            "Each attack's own statistics over all samples."
            if not self.only_robust
            else "Cumulative: per sample the highest interest class rank (ICR) over this attack and those before it; "
            "ASR denominators and top-k robust samples are only the samples attacked (clean top-1 correct)."
        )
        lines += ["## Top-k", "", scope, "", markdown_table([*headers, "median"], topk_rows), ""]
        times = [
            [f"{e.eps:.4g}", a, e.attacks[a].attacked, f"{e.attacks[a].seconds:.2f}"]
            for e in self.results
            for a in names
        ]
        lines += ["## Time", "", markdown_table(["eps", "attack", "samples attacked", "seconds"], times), ""]
        if self.sanity is not None:
            lines += ["## Sanity checks", ""]
            lines += [f"- {'**FLAG**' if f.fired else 'ok'} `{f.name}`: {f.message}" for f in self.sanity]
            lines.append("")
        return "\n".join(lines)

    def plots(self, out: str | os.PathLike) -> dict[str, str]:
        """``robust_vs_eps.png`` and ``icr_histogram.png`` in ``out``; returns their paths."""
        if not self.results:
            return {}
        out = Path(out)
        files = {"robust_vs_eps": str(out / "robust_vs_eps.png"), "icr_histogram": str(out / "icr_histogram.png")}
        plot_robust_vs_eps(self, files["robust_vs_eps"])
        plot_icr_histogram(self, files["icr_histogram"])
        return files

    def write(self, out: str | os.PathLike, plots: bool = True) -> dict[str, str]:
        """``report.json``, ``report.md`` and (with ``plots``) the PNGs in ``out``; returns the paths."""
        files = self.plots(out) if plots else {}
        files = {"json": str(Path(out) / "report.json"), "markdown": str(Path(out) / "report.md"), **files}
        self.files = {**self.files, **files}
        write_report(out, self.to_dict(), self.to_markdown())
        return files


def plot_robust_vs_eps(report: EvalReport, path: str | os.PathLike) -> None:
    """Robust accuracy against eps: one line per attack (cumulative) and the worst case."""
    entries = sorted(report.results, key=lambda e: e.eps)
    eps = [e.eps for e in entries]
    fig, ax = subplots(figsize=(5, 3.6))
    ax.plot(eps, [100 * e.clean_accuracy for e in entries], "k:", label="clean")
    for name in report.attack_names:
        ax.plot(eps, [100 * e.attacks[name].robust_accuracy_after for e in entries], "o-", label=f"after {name}")
    ax.plot(eps, [100 * e.robust_accuracy for e in entries], "s--", color="crimson", label="worst case")
    ax.set(xlabel=f"eps ({report.norm})", ylabel="accuracy (%)", ylim=(0, 100))
    ax.set_title(f"{report.model} on {report.dataset}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def plot_icr_histogram(report: EvalReport, path: str | os.PathLike) -> None:
    """Histogram of the worst-case interest class rank, one group of bars per eps."""
    entries = sorted(report.results, key=lambda e: e.eps)
    fig, ax = subplots(figsize=(5, 3.6))
    width = 0.8 / max(1, len(entries))
    for i, e in enumerate(entries):
        hist = e.worst_case_topk.icr["histogram"]
        total = max(1, sum(hist))
        ranks = [r + 1 + (i - (len(entries) - 1) / 2) * width for r in range(len(hist))]
        ax.bar(ranks, [100 * h / total for h in hist], width=width, label=f"eps {e.eps:.4g}")
    ax.set(xlabel="interest class rank after the attacks (1 = top)", ylabel="samples (%)")
    ax.set_xticks(range(1, len(entries[0].worst_case_topk.icr["histogram"]) + 1))
    ax.set_title(f"{report.model}: worst-case ICR", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


__all__ = ["AttackStats", "EpsEntry", "EvalReport", "TopKStats", "plot_icr_histogram", "plot_robust_vs_eps"]
