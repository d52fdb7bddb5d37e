"""Reports a user looks at: ``report.html`` for any run folder, rebuilt from saved results, and run comparisons."""

from robustlab.reports.html import HTML_FILE, read_report, render_html, report_kind, write_html
from robustlab.reports.rebuild import rebuild_report, report_markdown

__all__ = ["HTML_FILE", "read_report", "rebuild_report", "render_html", "report_kind", "report_markdown", "write_html"]
