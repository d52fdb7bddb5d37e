"""``robustlab report RUN_DIR``: ``report.md`` and ``report.html`` rebuilt from a run folder's saved results
(``report.json``, plots, ``gallery.pt``), without recomputing anything."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError
from robustlab.io import atomic_write_bytes
from robustlab.reports.html import HTML_FILE, read_report, render_html
from robustlab.reports.kinds import DAMAGE, report_from_dict, report_kind


def report_markdown(data: dict[str, Any]) -> str:
    """``report.md`` rendered again by the report's own type (the class registered for its kind) from
    ``report.json``, ending in a newline as runs write it."""
    report = report_from_dict(data)
    try:
        markdown = report.to_markdown()
    except DAMAGE as exc:
        raise RobustlabError(f"report.json of this {report.kind} run is incomplete or damaged ({exc!r})") from None
    return markdown if markdown.endswith("\n") else markdown + "\n"


def load_report(out: str | os.PathLike) -> dict[str, Any]:
    """``OUT/report.json`` as a dict of a known kind, or one error line (unreadable, not JSON, not a report)."""
    data = read_report(out)
    if not isinstance(data, dict):
        what = "null" if data is None else f"{type(data).__name__} {str(data)[:40]}"
        raise RobustlabError(
            f"{Path(out) / 'report.json'} holds {what}, not a robustlab report; run the command that wrote it again"
        )
    report_kind(data)  # one error line for a file of no known kind
    return data


def writing_into(out: Path) -> contextlib.AbstractContextManager:
    """One error line for a folder robustlab cannot write into (read-only, full, gone), naming it."""
    return _writing(out)


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise RobustlabError(
            f"cannot write into {out} ({exc.strerror or type(exc).__name__}); make it writable or give another folder"
        ) from None


def rebuild_report(out: str | os.PathLike) -> dict[str, str]:
    """Write ``OUT/report.md`` and ``OUT/report.html`` again from ``OUT/report.json``; returns their paths."""
    out = Path(out)
    if not out.is_dir():
        raise RobustlabError(f"{out} is not a folder; give the folder of a finished robustlab run")
    data = load_report(out)
    if not os.access(out, os.W_OK):
        raise RobustlabError(f"cannot write into {out} (read-only); make it writable, or copy the run elsewhere")
    files = {}
    markdown = report_markdown(data)  # checked before anything is written
    with writing_into(out):
        atomic_write_bytes(out / "report.md", markdown.encode())
        files["markdown"] = str(out / "report.md")
        try:
            html = render_html(out)  # (it embeds report.md)
        except DAMAGE as exc:
            raise RobustlabError(
                f"report.json of this {report_kind(data)} run is incomplete or damaged ({exc!r}); run the command again"
            ) from None
        atomic_write_bytes(out / HTML_FILE, html.encode())
        files["html"] = str(out / HTML_FILE)
    return files


__all__ = ["load_report", "rebuild_report", "report_markdown", "writing_into"]
