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

# Each subcommand is a module with ``add_parser(subparsers)`` (through common.subparser, which takes its one-line help
# from here) and a ``run(args) -> int`` default; ``robustlab --help`` lists them without importing them (and torch).
SUBCOMMANDS = {
    "attack": "attack a model with any attack spec (FGSM, PGD, top-k, AutoAttack, ...) and report robust accuracy",
    "eval": "robust accuracy under several attacks and eps values (worst case, AutoAttack, top-k, reports)",
    "transfer": "transfer attacks: craft on surrogates, evaluate on targets, top-k ASR matrix",
    "train": "adversarial training: noiseaug, fgsm-rs, n-fgsm, gradalign, pgd (PGD-AT), fgsm, standard",
    "ssl": "stage 1: train a self-supervised teacher encoder (SimCLR or SimCo)",
    "deacl": "stage 2: DeACL, a robust student encoder learns a frozen SSL teacher's features (no labels)",
    "pseudo-at": "pseudo-supervised adversarial training: a robust student of a frozen teacher's embedding, k-means "
    "clusters or linear-head predictions",
    "finetune": "fine-tune an encoder into a classifier: slf (linear), alf (adversarial linear), aff (TRADES, full)",
    "zoo": "list the embedded model zoo (architecture, training, clean and robust accuracy)",
    "report": "rebuild report.html and report.md of a run folder from its saved results",
    "compare": "the headline figures of several runs side by side (table, Markdown, plot)",
}
# Flags renamed in 0.2, by subcommand: the old spelling is refused in one line naming the new one (no abbreviations).
RENAMED = {
    "attack": {"--attack": "--attacks"}, "pseudo-at": {"--targets": "--pseudo-targets"},
    "finetune": {"--pgd-steps": "--eval-steps", "--pgd-restarts": "--eval-restarts"},
    "train": {"--alpha": "--step-size", "--k": "--noise-multiple", "--pgd-steps": "--steps",
              "--amp": "--precision fp16"},
}  # fmt: skip


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
    help shows its default; an option is its full name (no unique prefixes: an old name never parses as a new one)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def torch_version() -> str:
    """The installed torch's version, read from its metadata (importing torch takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The command line's parser: every subcommand in full (``"*"``), or only ``command`` in full and the others as
    their names and one-line helps (nothing imported for them: ``robustlab --help`` and a mistyped subcommand answer
    without loading torch)."""
    parser = Parser(
        prog="robustlab",
        description="Attack image classifiers and make them robust: one threat model, one evaluator.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    parser.add_argument("--version", action="version", version=f"robustlab {__version__} (torch {torch_version()})")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in SUBCOMMANDS.items():
        if command in ("*", name):
            import_module(f"robustlab.cli.{name.replace('-', '_')}").add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def named_command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option), or None."""
    words = [a for a in argv if not a.startswith("-")]
    return words[0] if words and words[0] in SUBCOMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for a user mistake, with one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = named_command(argv)
    parser = build_parser(command)
    renamed = RENAMED.get(command or "", {})
    old = next((word.split("=")[0] for word in argv if word.split("=")[0] in renamed), None)
    if old:
        parser.exit(2, f"robustlab {command}: error: unrecognized argument {old}: it was renamed {renamed[old]} (see "
                    f"robustlab {command} --help)\n")  # fmt: skip
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
