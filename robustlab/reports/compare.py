"""Several runs side by side: the headline figures of evaluation, attack, transfer or training run folders
(read from their ``report.json``, nothing recomputed) as one table, Markdown and a bar plot."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError
from robustlab.io import atomic_write_bytes, markdown_table
from robustlab.reports.html import report_kind
from robustlab.reports.rebuild import load_report, writing_into

Figure = tuple[float, list[float] | None]  # a fraction in [0, 1] and its 95 % interval, if the report has one


def _eval_figures(d: dict[str, Any]) -> dict[str, Figure]:
    figures: dict[str, Figure] = {}
    for e in sorted(d["results"], key=lambda entry: entry["eps"]):
        ci = e.get("intervals", {})
        figures.setdefault("clean accuracy", (e["clean_accuracy"], ci.get("clean_accuracy")))
        figures[f"robust accuracy, {d['threat']['norm']} eps {e['eps']:.4g}"] = (
            e["robust_accuracy"], ci.get("robust_accuracy"))  # fmt: skip
    return figures


def _attack_figures(d: dict[str, Any]) -> dict[str, Figure]:
    ci, eps = d.get("intervals", {}), f"{d['threat']['norm']} eps {d['threat']['eps']:.4g}"
    return {
        "clean accuracy": (d["clean_accuracy"], ci.get("clean_accuracy")),
        f"robust accuracy, {eps}": (d["robust_accuracy"], ci.get("robust_accuracy")),
        f"{d['name']} attack success rate, {eps}": (d["attack_success_rate"], ci.get("attack_success_rate")),
    }


def _transfer_figures(d: dict[str, Any]) -> dict[str, Figure]:
    figures: dict[str, Figure] = {}
    for attack, by_k in d["matrix"].items():
        top1 = by_k.get("1") or next(iter(by_k.values()))
        for r, source in enumerate(top1["rows"]):
            for c, target in enumerate(top1["columns"]):
                figures[f"{attack} top-1 ASR, {source} -> {target}"] = (top1["asr"][r][c], None)
    return figures


def _training_figures(d: dict[str, Any]) -> dict[str, Figure]:
    ev, last = d.get("evaluation") or {}, (d.get("history") or [{}])[-1]
    figures: dict[str, Figure] = {}
    if "clean_accuracy" in ev:
        figures["clean accuracy"] = (ev["clean_accuracy"], None)
        threat = ev.get("threat", {})
        where = f", {threat.get('norm', '')} eps {threat['eps']:.4g}" if "eps" in threat else ""
        figures[f"robust accuracy under {ev.get('pgd_attack', 'pgd')}{where}"] = (ev["pgd_accuracy"], None)
        if "autoattack_accuracy" in ev:
            figures[f"robust accuracy under PGD + AutoAttack{where}"] = (ev["autoattack_accuracy"], None)
    if "knn_accuracy" in last:
        figures["kNN accuracy (last epoch)"] = (last["knn_accuracy"], None)
    return figures


def headline_figures(data: dict[str, Any]) -> dict[str, Figure]:
    """The figures a reader compares runs by, from a ``report.json`` of any kind."""
    kind = report_kind(data)
    try:
        if kind in ("eval", "attack", "transfer"):
            figures = {"eval": _eval_figures, "attack": _attack_figures, "transfer": _transfer_figures}[kind](data)
        else:
            figures = _training_figures(data)
    except KeyError as exc:
        raise RobustlabError(f"report.json of this {kind} run lacks {exc}; run the command again") from None
    except (TypeError, IndexError, ValueError, AttributeError) as exc:
        raise RobustlabError(f"report.json of this {kind} run has a malformed field ({exc}); run it again") from None
    for metric, (value, ci) in figures.items():
        interval_ok = ci is None or (isinstance(ci, list) and len(ci) == 2 and all(map(_is_number, ci)))
        if not _is_number(value) or not interval_ok:
            raise RobustlabError(
                f"report.json of this {kind} run gives {metric} as {value!r} (interval {ci!r}), not a number; run "
                "the command again"
            )
    return figures


def sample_count(data: dict[str, Any]) -> int | None:
    """How many samples a run's headline figures are over (a training run: its final evaluation's)."""
    scored = data if report_kind(data) in ("eval", "attack", "transfer") else data.get("evaluation") or {}
    n = scored.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def with_intervals(figures: dict[str, Figure], n: int | None) -> dict[str, Figure]:
    """Accuracies over ``n`` samples get their 95 % Clopper-Pearson interval where the report has none (a training
    run's final evaluation), so runs of different n compare by their intervals."""
    from robustlab.eval.intervals import clopper_pearson

    if n is None:
        return figures
    return {
        m: (v, ci if ci or "accuracy" not in m or "kNN" in m else list(clopper_pearson(round(v * n), n)))
        for m, (v, ci) in figures.items()
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Comparison:
    """Runs side by side: ``figures[run][metric]`` for the ``metrics`` any of them reports."""

    runs: list[str]
    kinds: list[str]
    metrics: list[str]
    figures: dict[str, dict[str, Figure]]
    files: dict[str, str] = field(default_factory=dict)
    n: dict[str, int | None] = field(default_factory=dict)  # samples behind each run's figures

    def rows(self) -> list[list[str]]:
        """One row per metric, one column per run (in %, with the 95 % interval where the run has one)."""

        def cell(run: str, metric: str) -> str:
            if metric not in self.figures[run]:
                return "-"
            value, ci = self.figures[run][metric]
            return f"{100 * value:.2f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")

        rows = [[metric, *[cell(run, metric) for run in self.runs]] for metric in self.metrics]
        if self.n:
            rows.insert(0, ["n (samples)", *[str(self.n.get(run) or "-") for run in self.runs]])
        return rows

    def to_markdown(self) -> str:
        kinds = ", ".join(f"`{r}`: {k}" for r, k in zip(self.runs, self.kinds))
        table = markdown_table(["metric (%)", *self.runs], self.rows())
        ns = sorted({n for n in self.n.values() if n})
        note = (
            f" The runs are over different numbers of samples ({', '.join(map(str, ns))}): compare them by their 95 % "
            "Clopper-Pearson intervals (in brackets); a difference inside them is not a difference."
            if len(ns) > 1
            else ""
        )
        return f"# Runs compared\n\n{kinds}. Figures from each run's report.json, in %.{note}\n\n{table}\n"

    def plot(self, path: str | os.PathLike) -> None:
        """A grouped bar chart: one group per metric, one bar per run (with the interval where known)."""
        from robustlab.plots import save_png, subplots

        fig, ax = subplots(figsize=(max(6.0, 1.2 * len(self.metrics) * max(1, len(self.runs)) / 2), 4.2),
                           layout="constrained")  # fmt: skip
        width = 0.8 / len(self.runs)
        for i, run in enumerate(self.runs):
            xs = [m + (i - (len(self.runs) - 1) / 2) * width for m in range(len(self.metrics))]
            values = [100 * self.figures[run].get(m, (float("nan"), None))[0] for m in self.metrics]
            errors = [[0.0, 0.0] for _ in self.metrics]
            for j, m in enumerate(self.metrics):
                value, ci = self.figures[run].get(m, (0.0, None))
                if ci:
                    errors[j] = [100 * (value - ci[0]), 100 * (ci[1] - value)]
            known = any(e != [0.0, 0.0] for e in errors)
            ax.bar(xs, values, width, label=run, yerr=list(zip(*errors)) if known else None, capsize=2)
        ax.set_xticks(range(len(self.metrics)), [m.replace(", ", ",\n") for m in self.metrics], fontsize=7)
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7)
        save_png(fig, path)


def compare_runs(run_dirs: list[str | os.PathLike], out: str | os.PathLike | None = None) -> Comparison:
    """Read each run folder's ``report.json``; with ``out``, write ``compare.md`` and ``compare.png`` there."""
    if len(run_dirs) < 2:
        raise RobustlabError("give two or more run folders to compare")
    if out is not None:
        _check_out(Path(out))
    paths = [Path(d) for d in run_dirs]
    names = [p.name for p in paths]
    if len(set(names)) < len(names):  # the same folder name in several places: the paths tell them apart
        names = [str(p) for p in paths]
    reports = [load_report(p) for p in paths]
    figures = {}
    counts = {name: sample_count(data) for name, data in zip(names, reports)}
    for name, path, data in zip(names, paths, reports):
        try:
            figures[name] = with_intervals(headline_figures(data), counts[name])
        except RobustlabError as exc:
            raise RobustlabError(f"{path / 'report.json'}: {exc}") from None
    metrics = list(dict.fromkeys(m for f in figures.values() for m in f))
    comparison = Comparison(names, [report_kind(d) for d in reports], metrics, figures, n=counts)
    if out is not None:
        out = Path(out)
        with writing_into(out):
            out.mkdir(parents=True, exist_ok=True)
            comparison.files = {"markdown": str(out / "compare.md"), "plot": str(out / "compare.png")}
            atomic_write_bytes(out / "compare.md", comparison.to_markdown().encode())
            comparison.plot(out / "compare.png")
    return comparison


def _check_out(out: Path) -> None:
    """``--out`` must be a folder robustlab can create or write into: one error line before any report is read."""
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == out else f"lies under the file {parent}"
            raise RobustlabError(f"--out {out} {where}; give a folder (compare.md and compare.png go there)")
        if parent.exists():
            if not os.access(parent, os.W_OK):
                raise RobustlabError(f"--out {out}: {parent} is not writable; give a folder you can write into")
            return


__all__ = ["Comparison", "compare_runs", "headline_figures"]
