"""``robustlab report RUN_DIR``: ``report.md`` and ``report.html`` rebuilt from a run folder's saved results
(``report.json``, plots, ``gallery.pt``), without recomputing anything."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError
from robustlab.io import atomic_write_bytes
from robustlab.reports.html import read_report, report_kind, write_html


def report_markdown(data: dict[str, Any]) -> str | None:
    """``report.md`` rendered again by the report's own type from ``report.json`` (None: the kind keeps its
    saved Markdown, e.g. transfer, whose Markdown needs the per-sample tensors)."""
    kind = report_kind(data)
    try:
        if kind == "eval":
            from robustlab.eval.report import EvalReport

            return EvalReport.from_dict(data).to_markdown()
        if kind == "attack":
            from robustlab.eval.attack_run import AttackReport
            from robustlab.eval.entries import TopKStats

            names = {f.name for f in dataclasses.fields(AttackReport)}
            fields = {k: v for k, v in data.items() if k in names}
            return AttackReport(**{**fields, "topk": TopKStats.from_dict(data["topk"])}).to_markdown() + "\n"
        if kind == "transfer":
            return None
        from robustlab.training.report import TrainReport

        names = [f.name for f in dataclasses.fields(TrainReport) if f.name not in ("summary_keys", "extra")]
        extra = {k: v for k, v in data.items() if k not in names and k != "epoch_seconds_mean"}
        return TrainReport(**{k: data[k] for k in names if k in data}, extra=extra).markdown()
    except (KeyError, TypeError, ValueError) as exc:
        raise RobustlabError(f"report.json of this {kind} run is incomplete or damaged ({exc!r})") from None


def rebuild_report(out: str | os.PathLike) -> dict[str, str]:
    """Write ``OUT/report.md`` (where its type can render it again) and ``OUT/report.html``; returns the paths."""
    out = Path(out)
    if not out.is_dir():
        raise RobustlabError(f"{out} is not a folder; give the folder of a finished robustlab run")
    data = read_report(out)
    files = {}
    markdown = report_markdown(data)
    if markdown is not None:
        atomic_write_bytes(out / "report.md", markdown.encode())
        files["markdown"] = str(out / "report.md")
    files["html"] = write_html(out)
    return files


__all__ = ["rebuild_report", "report_markdown"]
