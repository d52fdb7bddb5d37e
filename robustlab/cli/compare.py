"""``robustlab compare RUN_DIR...``: the headline figures of several runs side by side."""

from __future__ import annotations

import argparse

from robustlab.cli import common as c


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = c.subparser(
        subparsers, "compare",
        "Read the report.json of two or more eval, attack, transfer or training run folders and print "
        "their headline figures side by side (in %, with 95 % intervals where the run has them); --out writes "
        "compare.md and compare.png. Example: robustlab compare runs/pgd-at runs/noiseaug",
    )  # fmt: skip
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders (each holds report.json)")
    p.add_argument("--out", metavar="DIR", help="also write DIR/compare.md and DIR/compare.png (default: print only)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from robustlab.report_kinds import compare_runs  # (with every kind of report loaded)

    comparison = compare_runs(args.run_dirs, args.out)
    print(comparison.to_markdown())
    if comparison.files:
        print(f"markdown: {comparison.files['markdown']}; plot: {comparison.files['plot']}")
    return 0
