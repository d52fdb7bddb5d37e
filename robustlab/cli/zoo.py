"""``robustlab zoo``: the embedded models, with how they were trained and how accurate and robust they are."""

from __future__ import annotations

import argparse
import json

from robustlab.cli import common as c
from robustlab.models import zoo_index
from robustlab.models.zoo_table import zoo_table


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = c.subparser(
        subparsers, "zoo",
        "The models that ship with robustlab, usable anywhere a model is taken as zoo:NAME. Figures "
        "come from robustlab/models/zoo/zoo.json (with the command that trained each model: --json shows it).",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the full metadata as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(zoo_index(), indent=2) if args.json else zoo_table())
    return 0
