"""``robustlab zoo``: the embedded models, with how they were trained and how accurate and robust they are."""

from __future__ import annotations

import argparse
import json
from typing import Any

from robustlab.cli import common as c
from robustlab.io import markdown_table
from robustlab.models import zoo_index


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = c.subparser(
        subparsers, "zoo",
        "The models that ship with robustlab, usable anywhere a model is taken as zoo:NAME. Figures "
        "come from robustlab/models/zoo/zoo.json (with the command that trained each model: --json shows it).",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the full metadata as JSON")
    p.set_defaults(run=run)


def _percent(value: Any) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def robust_figure(meta: dict[str, Any]) -> str:
    """The recorded robust accuracy in a few words (attack, norm, eps, n), or '-' (also for a figure recorded
    without its attack, norm, eps or n)."""
    try:
        return _robust_figure(meta)
    except (KeyError, TypeError, ValueError):
        return "-"


def _robust_figure(meta: dict[str, Any]) -> str:
    robust, other = meta.get("robust_accuracy"), meta.get("robustness")
    if isinstance(robust, dict):
        text = f"{100 * robust['value']:.1f} % ({robust['attack']}, {robust['norm']} {robust['eps']}, n={robust['n']})"
        aa = meta.get("autoattack")
        return text + (f"; {100 * aa['robust_accuracy']:.1f} % after AutoAttack" if isinstance(aa, dict) else "")
    if isinstance(other, dict) and "autoattack_accuracy" in other:
        attack = "APGD-CE + APGD-T after PGD-10"  # zoo.json names the reduced AutoAttack it ran
        return f"{100 * other['autoattack_accuracy']:.1f} % ({attack}, eps {other['eps']}, n={other['eval_n']})"
    return "-"


def run(args: argparse.Namespace) -> int:
    index = zoo_index()
    if args.json:
        print(json.dumps(index, indent=2))
        return 0
    rows = [
        [f"zoo:{name}", meta["arch"], meta["dataset"], _percent(meta.get("test_accuracy")), robust_figure(meta),
         meta.get("training", "-")]
        for name, meta in sorted(index.items())
    ]  # fmt: skip
    print(markdown_table(["model", "arch", "dataset", "clean", "robust", "training"], rows))
    return 0
