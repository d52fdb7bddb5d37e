"""The typed report of an evaluation run: per-eps entries, per-attack statistics, top-k statistics, sanity flags.

:class:`EvalReport` renders itself (``report.json`` with the same keys as ever, ``report.md``, PNG plots) and reads
itself back (:meth:`EvalReport.load`). Every number is derived from :class:`~robustlab.eval.EvalResult` objects
(saved next to the report as ``results.pt``), so anyone can recompute it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from robustlab.errors import RobustlabError
from robustlab.eval.curve import curve_lines
from robustlab.eval.entries import AttackStats, EpsEntry, TopKStats
from robustlab.eval.figures import plot_curve, plot_icr_histogram, plot_per_class, plot_robust_vs_eps
from robustlab.eval.indicators import indicator_lines
from robustlab.eval.intervals import clopper_pearson, format_interval
from robustlab.eval.sanity import Flag
from robustlab.io import markdown_table, write_report
from robustlab.reports.kinds import Figure, from_fields, register_report


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _ci(value: float, bounds: list[float] | None) -> str:
    return format_interval(value, bounds)


def _passes(flag: Flag) -> str:
    return f" ({flag.forward_passes} forward, {flag.backward_passes} backward passes)"


COST_PARTS = ("clean", "attacks", "sanity", "setup")


def run_cost(results: list[EpsEntry], sanity: list[Flag] | None, setup: dict[str, int] | None = None) -> dict:
    """A run's passes (images forward, input gradients backward) by part and in total: the evaluator's clean
    predictions, the attacks (every eps), the sanity checks and the setup (probing the model, the adaptive plan)."""
    zero = {"forward_passes": 0, "backward_passes": 0}
    attacks = [(s.forward_passes, s.backward_passes) for e in results for s in e.attacks.values()]
    parts = {
        "clean": {"forward_passes": sum(e.clean_passes for e in results), "backward_passes": 0},
        "attacks": {"forward_passes": sum(f for f, _ in attacks), "backward_passes": sum(b for _, b in attacks)},
        "sanity": {"forward_passes": sum(f.forward_passes for f in sanity or []),
                   "backward_passes": sum(f.backward_passes for f in sanity or [])},
        "setup": {**zero, **(setup or {})},
    }  # fmt: skip
    total = {k: sum(part[k] for part in parts.values()) for k in zero}
    return {**total, **parts}


@register_report
@dataclass
class EvalReport:
    """What ``robustlab eval`` (and :func:`~robustlab.eval.run_evaluation`) reports; renders itself."""

    kind: ClassVar[str] = "eval"
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
    protocol: str = "separate"  # eps protocol: "nested" (a break at a smaller eps carries over) or "separate"
    class_names: list[str] = field(default_factory=list)
    adaptive: dict[str, Any] = field(default_factory=dict)  # mode, flags fired, attacks added and why, headline
    judgement: dict[str, Any] = field(default_factory=lambda: {"predictions": 1, "vote": "mean"})
    min_eps: dict[str, int] = field(default_factory=dict)  # samples per smallest breaking eps ("none": robust)
    runtime: dict[str, dict[str, str]] = field(default_factory=dict)  # attack -> memory format, precision it ran with
    cost: dict[str, Any] = field(default_factory=dict)  # passes of the whole run (see run_cost); {} in older reports
    indicators: list[dict[str, Any]] | None = None  # indicators of attack failure (eval/indicators.py), with the flags
    curve: dict[str, Any] | None = None  # --curve: robust accuracy at every eps from one minimum-norm run (eval/curve)

    @property
    def headline_note(self) -> str:
        """What the headline robust accuracy is worth: an upper bound, checked or not for gradient masking."""
        return str(self.adaptive.get("headline", "an upper bound on the true robust accuracy"))

    @property
    def sanity_fired(self) -> list[str]:
        return [f.name for f in self.sanity or [] if f.fired]

    @property
    def attack_names(self) -> list[str]:
        return list(self.attacks)

    def to_dict(self) -> dict[str, Any]:
        """``report.json``: the keys every reader of robustlab's reports knows."""
        return {
            "kind": self.kind, "model": self.model, "dataset": self.dataset, "split": self.split, "n": self.n,
            "threat": {"norm": self.norm, "bounds": list(self.bounds)}, "eps": list(self.eps),
            "only_robust": self.only_robust, "attacks": self.attacks, "seeds": self.seeds,
            "results": [e.to_dict() for e in self.results],
            "sanity": None if self.sanity is None else [f.to_dict() for f in self.sanity],
            "sanity_fired": self.sanity_fired, "world_size": self.world_size, "config": self.config,
            "wall_time_s": self.wall_time_s, "environment": self.environment, "files": self.files,
            "eps_protocol": self.protocol, "class_names": self.class_names, "adaptive": self.adaptive,
            "judgement": self.judgement, "min_eps": self.min_eps, "runtime": self.runtime, "cost": self.cost,
            "indicators": self.indicators, "curve": self.curve,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        """The report of a ``report.json`` (:meth:`to_dict`), fields read by name; keys older reports lack take
        their defaults."""
        try:
            return from_fields(
                cls, d, norm=d["threat"]["norm"], bounds=tuple(d["threat"]["bounds"]), eps=list(d["eps"]),
                seeds=d.get("seeds", {}), results=[EpsEntry.from_dict(e) for e in d["results"]],
                protocol=d.get("eps_protocol", "separate"),
                sanity=None if d.get("sanity") is None else [Flag(**f) for f in d["sanity"]],
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise RobustlabError(f"not a robustlab evaluation report (missing or bad {exc})") from None

    def headline(self) -> dict[str, Figure]:
        """Clean accuracy and the worst-case robust accuracy at each eps, with their 95 % intervals."""
        figures: dict[str, Figure] = {}
        for e in sorted(self.results, key=lambda entry: entry.eps):
            figures.setdefault("clean accuracy", (e.clean_accuracy, e.intervals.get("clean_accuracy")))
            figures[f"robust accuracy, {self.norm} eps {e.eps:.4g}"] = (
                e.robust_accuracy, e.intervals.get("robust_accuracy"))  # fmt: skip
        return figures

    def page_title(self) -> str:
        return f"Evaluation of {self.model} on {self.dataset}"

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
            f"Threat model: {self.norm}, bounds {list(self.bounds)}. Attacks run in order, {protocol}. "
            f"{self.protocol_text()} Accuracies in % with their 95 % Clopper-Pearson interval over n = {self.n}, "
            f"top-1 at the adversarial points ({self.judgement_text()}); an attack's column is the robust accuracy "
            "after it and all before it.",
            "",
            f"**Headline**: {self.headline_text()}",
            "",
        ]
        rows = [
            [f"{e.eps:.4g}", _ci(e.clean_accuracy, e.intervals.get("clean_accuracy"))]
            + [_ci(e.attacks[a].robust_accuracy_after, e.attacks[a].robust_accuracy_after_ci) for a in names]
            + [_ci(e.robust_accuracy, e.intervals.get("robust_accuracy"))]
            for e in self.results
        ]
        lines += [markdown_table(["eps", "clean", *[f"after {a}" for a in names], "robust (worst case)"], rows), ""]
        lines += self.detail_lines()
        for e in self.results:
            if e.nonfinite:
                lines += [f"At eps {e.eps:.4g}, {len(e.nonfinite)} sample(s) had NaN/inf logits (counted neither "
                          f"correct nor robust): {e.nonfinite[:20]}", ""]  # fmt: skip
        topk_rows = []
        for e in self.results:
            for a in [*names, "worst case"]:
                s = e.worst_case_topk if a == "worst case" else e.attacks[a].topk
                topk_rows.append(
                    [
                        f"{e.eps:.4g}",
                        a,
                        *[_pct(s.asr[k]) for k in ks],
                        *[
                            _ci(s.robust_accuracy[k], (s.intervals or {}).get("robust_accuracy", {}).get(str(k)))
                            for k in ks
                        ],
                    ]
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
        counted = bool(self.cost)  # older reports hold no pass counts
        times = [
            [f"{e.eps:.4g}", a, e.attacks[a].attacked, f"{e.attacks[a].seconds:.2f}"]
            + ([e.attacks[a].forward_passes, e.attacks[a].backward_passes] if counted else [])
            for e in self.results
            for a in names
        ]
        headers = ["eps", "attack", "samples attacked", "seconds"] + (["forward passes", "backward passes"] * counted)
        lines += ["## Time", "", markdown_table(headers, times), ""]
        if counted:
            lines += self.cost_lines()
        if self.sanity is not None:
            lines += ["## Sanity checks", ""]
            lines += [f"- {'**FLAG**' if f.fired else 'ok'} `{f.name}`: {f.message}{_passes(f) if counted else ''}"
                      for f in self.sanity]  # fmt: skip
            lines.append("")
        lines += indicator_lines(self.indicators)
        return "\n".join(lines)

    def cost_lines(self) -> list[str]:
        """``## Cost``: the run's forward and backward passes (images) by part, summed over torchrun ranks."""
        rows = [
            [part, self.cost[part]["forward_passes"], self.cost[part]["backward_passes"]]
            for part in COST_PARTS
            if part in self.cost
        ]
        rows.append(["**total**", self.cost["forward_passes"], self.cost["backward_passes"]])
        text = ("Images through the model forward and input gradients taken backward (a batch of 256 counts 256; "
                "restarts, EOT draws and every torchrun rank included); clean: the evaluator's own predictions.")
        return ["## Cost", "", text, "", markdown_table(["part", "forward passes", "backward passes"], rows), ""]

    def protocol_text(self) -> str:
        if self.protocol == "nested":
            return ("Eps protocol: nested (ascending eps; a sample broken at a smaller eps counts as broken at every "
                    "larger one, with the example that broke it; only the others are attacked when every attack's "
                    "result is independent of its batch (robustlab's gradient attacks: random starts keyed by "
                    "sample); with attacks that draw for the whole batch (AutoAttack, torchattacks) each eps attacks "
                    "what a separate evaluation would and only the verdicts carry over: never above separate eps)."
                    )  # fmt: skip
        return "Eps protocol: separate (each eps evaluated from scratch)."

    def judgement_text(self) -> str:
        r, vote = self.judgement.get("predictions", 1), self.judgement.get("vote", "mean")
        return "one forward pass" if r == 1 else f"{r} forward passes per prediction, {vote} rule"

    def headline_text(self) -> str:
        """The headline robust accuracy (worst case at the largest eps), what it is worth and the weakest classes."""
        if not self.results:
            return "no results"
        e = max(self.results, key=lambda entry: entry.eps)
        text = f"robust accuracy {_ci(e.robust_accuracy, e.intervals.get('robust_accuracy'))} % at eps {e.eps:.4g}"
        text += f" ({self.headline_note})"
        weakest = e.weakest_classes(self.class_names) if e.per_class and self.class_names else []
        if weakest and e.robust_accuracy > 0:  # when every class is at 0 %, no class is the weakest
            text += "; weakest classes: " + ", ".join(f"{n} {100 * r:.1f} %" for n, r, _ in weakest)
        return text

    def detail_lines(self) -> list[str]:
        """Adaptive attacks added, per-class accuracy and the smallest breaking eps, as markdown lines."""
        lines: list[str] = []
        if self.adaptive.get("added"):
            lines += ["## Adaptive attacks added", "", f"Flags fired: {', '.join(self.adaptive.get('fired', []))}.", ""]
            lines += [f"- `{a}`: {why}" for a, why in self.adaptive["added"].items()] + [""]
        if self.results and self.results[0].per_class:
            names = self.class_names or [str(c) for c in range(len(self.results[0].per_class["n"]))]
            rows = []
            for c, name in enumerate(names):
                first = self.results[0].per_class
                n = first["n"][c]
                row = [
                    name,
                    n,
                    _ci(first["clean_correct"][c] / max(1, n), list(clopper_pearson(first["clean_correct"][c], n))),
                ]
                for e in self.results:
                    k = e.per_class["robust"][c]
                    row.append(_ci(k / max(1, n), list(clopper_pearson(k, n))))
                rows.append(row)
            headers = ["class", "n", "clean", *[f"robust, eps {e.eps:.4g}" for e in self.results]]
            lines += ["## Per class", "", markdown_table(headers, rows), ""]
        lines += curve_lines(self.curve)
        if self.min_eps:
            rows = [[k, v] for k, v in self.min_eps.items()]
            lines += [
                "## Smallest breaking eps per sample",
                "",
                markdown_table(["smallest eps that breaks it", "samples"], rows),
                "",
            ]
        return lines

    def plots(self, out: str | os.PathLike) -> dict[str, str]:
        """``robust_vs_eps.png``, ``icr_histogram.png`` and ``per_class.png`` in ``out``; returns their paths."""
        if not self.results:
            return {}
        out = Path(out)
        files = {"robust_vs_eps": str(out / "robust_vs_eps.png"), "icr_histogram": str(out / "icr_histogram.png")}
        plot_robust_vs_eps(self, files["robust_vs_eps"])
        plot_icr_histogram(self, files["icr_histogram"])
        if self.results[0].per_class:
            files["per_class"] = str(out / "per_class.png")
            plot_per_class(self, files["per_class"])
        if self.curve:
            files["curve"] = str(out / "robustness_curve.png")
            plot_curve(self.curve, files["curve"], f"{self.model} on {self.dataset}")
        return files

    def write(self, out: str | os.PathLike, plots: bool = True) -> dict[str, str]:
        """``report.json``, ``report.md`` and (with ``plots``) the PNGs in ``out``; returns the paths."""
        files = self.plots(out) if plots else {}
        files = {"json": str(Path(out) / "report.json"), "markdown": str(Path(out) / "report.md"), **files}
        self.files = {**self.files, **files}
        write_report(out, self.to_dict(), self.to_markdown())
        return files


__all__ = ["AttackStats", "EpsEntry", "EvalReport", "TopKStats", "run_cost", "plot_icr_histogram", "plot_robust_vs_eps"]
