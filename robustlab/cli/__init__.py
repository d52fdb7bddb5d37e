"""The ``robustlab`` command line: a thin layer over the Python API (parse, call, print)."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from importlib import import_module
from typing import NoReturn

from robustlab import __version__
from robustlab.errors import RobustlabError

# Each subcommand is a module with ``add_parser(subparsers)`` and ``run(args) -> int``.
SUBCOMMANDS = [
    "attack", "eval", "transfer", "train", "ssl", "deacl", "pseudo-at", "finetune", "zoo", "report", "compare",
]  # fmt: skip


class DefaultsFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it (one place for "(default: X)")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = not any(action.default is v for v in (None, False, True, argparse.SUPPRESS)) and action.nargs != 0
        if shown and action.option_strings and not action.required and "default" not in text:
            text += " (default: %(default)s)" if text else "(default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (and exit code 2), not a usage dump; every option's
    help shows its default."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def torch_version() -> str:
    import torch

    return torch.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="robustlab",
        description="Attack image classifiers and make them robust: one threat model, one evaluator.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    parser.add_argument("--version", action="version", version=f"robustlab {__version__} (torch {torch_version()})")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        import_module(f"robustlab.cli.{name.replace('-', '_')}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for a user mistake, with one line on stderr)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["robustlab", *argv])  # for reports: the library never reads sys.argv
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.run(args) or 0)
    except RobustlabError as exc:
        print(f"robustlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"robustlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
