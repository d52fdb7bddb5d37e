"""Reports of evaluations: ``report.json`` (everything), ``report.md`` (tables to paste) and PNG plots.

Every number in a report is derived from :class:`~robustlab.eval.EvalResult` objects (saved next to the report
as ``results.pt``), so anyone can recompute it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustlab.eval.evaluator import EvalResult
from robustlab.eval.metrics import topk_report
from robustlab.io import markdown_table
from robustlab.plots import save_png, subplots


def eps_entry(eps: float, result: EvalResult, ks: Sequence[int] | None = None) -> dict[str, Any]:
    """Everything measured at one eps: accuracies, each attack's effect and time, top-k statistics."""
    summary = result.summary()
    topk = topk_report(result, ks)
    for name, stats in summary["attacks"].items():
        stats["topk"] = topk["attacks"][name]
        if bool(result.attacked[name].all()):  # the attack ran on every sample: its own robust accuracy
            stats["robust_accuracy_alone"] = (result.clean_correct & ~result.success[name]).float().mean().item()
    return {
        "eps": eps,
        **summary,
        "worst_case_topk": topk["worst_case"],
        "topk_ks": topk["ks"],
        "topk_scope": topk["scope"],
    }


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def markdown_report(report: dict[str, Any]) -> str:
    """``report.md``: robust accuracy per eps and attack, top-k statistics, sanity flags."""
    entries = report["results"]
    names = list(entries[0]["attacks"]) if entries else []
    protocol = "each only on the samples still robust (AutoAttack)" if report["only_robust"] else "each on all"
    lines = [
        f"# Robustness of `{report['model']}` on {report['dataset']} ({report['split']}, n = {report['n']})",
        "",
        f"Threat model: {report['threat']['norm']}, bounds {report['threat']['bounds']}. Attacks run in order, "
        + f"{protocol}. Accuracies in %; an attack's column is the robust accuracy after it and all before it.",
        "",
    ]
    rows = [
        [f"{e['eps']:.4g}", _pct(e["clean_accuracy"]), *[_pct(e["attacks"][a]["robust_accuracy_after"]) for a in names]]
        + [_pct(e["robust_accuracy"])]
        for e in entries
    ]
    lines += [markdown_table(["eps", "clean", *[f"after {a}" for a in names], "robust (worst case)"], rows), ""]
    ks = entries[0]["topk_ks"] if entries else []
    topk_rows = []
    for e in entries:
        for a in [*names, "worst case"]:
            stats = e["worst_case_topk"] if a == "worst case" else e["attacks"][a]["topk"]
            topk_rows.append(
                [f"{e['eps']:.4g}", a, *[_pct(stats["asr"][str(k)]) for k in ks]]
                + [*[_pct(stats["robust_accuracy"][str(k)]) for k in ks], f"{stats['icr']['mean']:.2f}"]
                + [f"{stats['icr']['median']:.0f}"]
            )
    headers = ["eps", "attack", *[f"top-{k} ASR" for k in ks], *[f"top-{k} robust" for k in ks], "ICR mean", "median"]
    scope = (
        "Each attack's own statistics over all samples."
        if not report["only_robust"]
        else "Cumulative: per sample the highest interest class rank (ICR) over this attack and those before it."
    )
    lines += ["## Top-k", "", scope, "", markdown_table(headers, topk_rows), ""]
    times = [
        [f"{e['eps']:.4g}", a, e["attacks"][a]["attacked"], f"{e['attacks'][a]['seconds']:.2f}"]
        for e in entries
        for a in names
    ]
    lines += ["## Time", "", markdown_table(["eps", "attack", "samples attacked", "seconds"], times), ""]
    if report.get("sanity") is not None:
        lines += ["## Sanity checks", ""]
        for flag in report["sanity"]:
            lines.append(f"- {'**FLAG**' if flag['fired'] else 'ok'} `{flag['name']}`: {flag['message']}")
        lines.append("")
    return "\n".join(lines)


def plot_robust_vs_eps(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Robust accuracy against eps: one line per attack (cumulative) and the worst case."""
    entries = sorted(report["results"], key=lambda e: e["eps"])
    eps = [e["eps"] for e in entries]
    fig, ax = subplots(figsize=(5, 3.6))
    ax.plot(eps, [100 * e["clean_accuracy"] for e in entries], "k:", label="clean")
    for name in entries[0]["attacks"]:
        ax.plot(eps, [100 * e["attacks"][name]["robust_accuracy_after"] for e in entries], "o-", label=f"after {name}")
    ax.plot(eps, [100 * e["robust_accuracy"] for e in entries], "s--", color="crimson", label="worst case")
    ax.set(xlabel=f"eps ({report['threat']['norm']})", ylabel="accuracy (%)", ylim=(0, 100))
    ax.set_title(f"{report['model']} on {report['dataset']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def plot_icr_histogram(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Histogram of the worst-case interest class rank, one group of bars per eps."""
    entries = sorted(report["results"], key=lambda e: e["eps"])
    fig, ax = subplots(figsize=(5, 3.6))
    width = 0.8 / max(1, len(entries))
    for i, e in enumerate(entries):
        hist = e["worst_case_topk"]["icr"]["histogram"]
        total = max(1, sum(hist))
        ranks = [r + 1 + (i - (len(entries) - 1) / 2) * width for r in range(len(hist))]
        ax.bar(ranks, [100 * h / total for h in hist], width=width, label=f"eps {e['eps']:.4g}")
    ax.set(xlabel="interest class rank after the attacks (1 = top)", ylabel="samples (%)")
    ax.set_xticks(range(1, len(entries[0]["worst_case_topk"]["icr"]["histogram"]) + 1))
    ax.set_title(f"{report['model']}: worst-case ICR", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def write_report(report: dict[str, Any], out: str | os.PathLike, plots: bool = True) -> dict[str, str]:
    """Write ``report.json``, ``report.md`` and (with ``plots``) the PNGs to ``out``; returns the paths."""
    from robustlab.io import atomic_write_bytes, write_json

    out = Path(out)
    files = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    if plots and report["results"]:
        files["robust_vs_eps"] = str(out / "robust_vs_eps.png")
        files["icr_histogram"] = str(out / "icr_histogram.png")
        out.mkdir(parents=True, exist_ok=True)
        plot_robust_vs_eps(report, files["robust_vs_eps"])
        plot_icr_histogram(report, files["icr_histogram"])
    report["files"] = {**report.get("files", {}), **files}
    atomic_write_bytes(out / "report.md", markdown_report(report).encode())
    write_json(out / "report.json", report)
    return files


__all__ = ["eps_entry", "markdown_report", "plot_icr_histogram", "plot_robust_vs_eps", "write_report"]
