"""Reports a user looks at: the one :class:`Report` shape and the registry of report kinds, ``report.html`` for any
run folder, rebuilt from saved results, and run comparisons. The kinds themselves register where they are defined
(:mod:`robustlab.report_kinds` loads every kind robustlab has)."""

from robustlab.reports.html import GALLERY_FILE, HTML_FILE, read_report, render_html, write_html
from robustlab.reports.kinds import REPORTS, Figure, Report, register_report, report_from_dict, report_kind
from robustlab.reports.rebuild import rebuild_report, report_markdown

__all__ = [
    "GALLERY_FILE",
    "HTML_FILE",
    "REPORTS",
    "Figure",
    "Report",
    "read_report",
    "rebuild_report",
    "register_report",
    "render_html",
    "report_from_dict",
    "report_kind",
    "report_markdown",
    "write_html",
]
