"""Several runs side by side: the headline figures of any runs -- evaluation, attack, transfer, training or a kind
of your own, also of different kinds (each report's :meth:`headline`, read from its ``report.json`` through the
registry of kinds, nothing recomputed) -- as one table, Markdown and a bar plot."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError
from robustlab.io import atomic_write_bytes, markdown_table
from robustlab.reports.kinds import DAMAGE, Figure, Report, report_from_dict
from robustlab.reports.rebuild import load_report, writing_into


def headline_figures(report: Report) -> dict[str, Figure]:
    """The figures a reader compares runs by (the report's :meth:`~robustlab.reports.kinds.Report.headline`),
    checked to be fractions with a two-number interval or none: one error line if the report.json was not."""
    try:
        figures = report.headline()
    except DAMAGE as exc:
        kind = report.kind
        raise RobustlabError(f"report.json of this {kind} run has a malformed field ({exc}); run it again") from None
    for metric, (value, ci) in figures.items():
        interval_ok = ci is None or (isinstance(ci, list) and len(ci) == 2 and all(map(_is_number, ci)))
        if not _is_number(value) or not interval_ok:
            raise RobustlabError(
                f"report.json of this {report.kind} run gives {metric} as {value!r} (interval {ci!r}), not a number; "
                "run the command again"
            )
    return figures


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(n: Any) -> int | None:
    """A sample count worth showing: a positive whole number, else None."""
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


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
    reports, figures = [], {}
    for name, path in zip(names, paths):
        data = load_report(path)
        try:
            reports.append(report_from_dict(data))
            figures[name] = headline_figures(reports[-1])
        except RobustlabError as exc:
            raise RobustlabError(f"{path / 'report.json'}: {exc}") from None
    metrics = list(dict.fromkeys(m for f in figures.values() for m in f))
    counts = {name: _count(report.n) for name, report in zip(names, reports)}
    comparison = Comparison(names, [r.kind for r in reports], metrics, figures, n=counts)
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
