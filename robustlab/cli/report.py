"""``robustlab report RUN_DIR``: rebuild a run's report.html (and report.md) from its saved results."""

from __future__ import annotations

import argparse

from robustlab.cli import common as c


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = c.subparser(
        subparsers, "report",
        "Rebuild OUT/report.html (one self-contained page: summary with intervals, plots, sanity flags, "
        "configuration, the attack gallery) and OUT/report.md from what a finished attack, eval, transfer or "
        "training run saved, without recomputing anything. Example: robustlab report runs/eval",
    )  # fmt: skip
    p.add_argument("run_dir", metavar="RUN_DIR", help="the folder of a finished robustlab run (holds report.json)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from robustlab.report_kinds import rebuild_report  # (with every kind of report loaded)

    files = rebuild_report(args.run_dir)
    print("; ".join(f"{kind}: {path}" for kind, path in files.items()))
    return 0
