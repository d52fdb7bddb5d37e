"""The evaluation report's figures: the robustness curve with its intervals, the ICR histogram, per-class bars."""

from __future__ import annotations

import os
from typing import Any

from robustlab.plots import save_png, subplots


def plot_robust_vs_eps(report: Any, path: str | os.PathLike) -> None:
    """Robust accuracy against eps: one line per attack (cumulative) and the worst case with its 95 % band."""
    entries = sorted(report.results, key=lambda e: e.eps)
    eps = [e.eps for e in entries]
    fig, ax = subplots(figsize=(5, 3.6))
    ax.plot(eps, [100 * e.clean_accuracy for e in entries], "k:", label="clean")
    for name in report.attack_names:
        ax.plot(eps, [100 * e.attacks[name].robust_accuracy_after for e in entries], "o-", label=f"after {name}")
    ax.plot(eps, [100 * e.robust_accuracy for e in entries], "s--", color="crimson", label="worst case")
    bands = [e.intervals.get("robust_accuracy") for e in entries]
    if all(bands):
        low, high = [100 * b[0] for b in bands], [100 * b[1] for b in bands]
        ax.fill_between(eps, low, high, color="crimson", alpha=0.15, label="95 % interval")
    ax.set(xlabel=f"eps ({report.norm})", ylabel="accuracy (%)", ylim=(0, 100))
    ax.set_title(f"{report.model} on {report.dataset} ({report.protocol} eps)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def plot_curve(curve: dict[str, Any], path: str | os.PathLike, title: str = "") -> None:
    """The robustness curve of one minimum-norm run with its 95 % band, the median minimal norm and the fixed-eps
    checks (the curve's value and the worst case at each)."""
    eps, acc = curve["eps"], [100 * a for a in curve["robust_accuracy"]]
    fig, ax = subplots(figsize=(5, 3.6))
    ax.plot(eps, acc, "-", color="navy", label=f"{curve['attack'].get('attack', 'fmn')} (minimum norm)")
    ax.fill_between(eps, [100 * b[0] for b in curve["intervals"]], [100 * b[1] for b in curve["intervals"]],
                    color="navy", alpha=0.15, label="95 % interval")  # fmt: skip
    checks = curve.get("checks", [])
    if checks:
        ax.plot([c["eps"] for c in checks], [100 * c["robust_accuracy"] for c in checks], "x", color="crimson",
                label=f"worst case with {checks[0]['attack']} at fixed eps")  # fmt: skip
    if curve.get("median_norm") is not None:
        ax.axvline(curve["median_norm"], color="grey", ls=":", label=f"median minimal norm {curve['median_norm']:.3g}")
    ax.set(xlabel=f"eps ({curve['norm']})", ylabel="robust accuracy (%)", ylim=(0, 100))
    ax.set_title(f"{title}: robustness curve" if title else "robustness curve", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def plot_icr_histogram(report: Any, path: str | os.PathLike) -> None:
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


def plot_per_class(report: Any, path: str | os.PathLike) -> None:
    """Clean and robust accuracy per class at the largest eps."""
    entry = max(report.results, key=lambda e: e.eps)
    counts = entry.per_class
    names = report.class_names or [str(c) for c in range(len(counts["n"]))]
    xs = range(len(names))
    fig, ax = subplots(figsize=(max(5, 0.5 * len(names)), 3.6))
    for offset, key, label in ((-0.2, "clean_correct", "clean"), (0.2, "robust", f"robust, eps {entry.eps:.4g}")):
        ax.bar([x + offset for x in xs], [100 * k / max(1, n) for k, n in zip(counts[key], counts["n"])], 0.4,
               label=label)  # fmt: skip
    ax.set_xticks(list(xs), names, rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="accuracy (%)", ylim=(0, 100))
    ax.set_title(f"{report.model}: per class", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


__all__ = ["plot_curve", "plot_icr_histogram", "plot_per_class", "plot_robust_vs_eps"]
