"""``robustlab --version`` and ``robustlab zoo``: what a newcomer asks first."""

from __future__ import annotations

import json

import pytest

from robustlab import __version__
from robustlab.cli import main
from robustlab.models import zoo_index


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and __version__ in capsys.readouterr().out


def test_zoo_lists_every_model_with_its_recorded_figures(capsys):
    assert main(["zoo"]) == 0
    table = capsys.readouterr().out
    for name, meta in zoo_index().items():
        row = next(line for line in table.splitlines() if f"zoo:{name} " in line)
        assert f"{100 * meta['test_accuracy']:.1f} %" in row and meta["arch"] in row
        robust = meta.get("robust_accuracy") or meta.get("robustness") or {}
        value = robust.get("value", robust.get("autoattack_accuracy"))
        assert (f"{100 * value:.1f} %" if value is not None else "| -  ") in row
    assert main(["zoo", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == zoo_index()


# One language across subcommands (issue 25, item 10): one meaning per flag name, every default shown.


def subcommand_parsers() -> dict:
    import argparse

    from robustlab.cli import build_parser

    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def help_of(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_every_option_of_every_subcommand_shows_its_default_or_says_it_is_required():
    import argparse

    for name, parser in subcommand_parsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or action.nargs == 0:
                continue  # positional, hidden, or a switch
            if isinstance(action, argparse._HelpAction) or action.required:
                continue
            text = formatter._get_help_string(action) % {**vars(action), "prog": parser.prog}
            assert "default" in text or "required" in text, (name, action.option_strings, text)
            assert "default: None" not in text, (name, action.option_strings, text)


def test_help_texts_print_no_doubled_percent_and_no_none_default(capsys):
    for name in subcommand_parsers():
        text = help_of(name, capsys)
        assert "%%" not in text and "(default: None)" not in text, name
    assert "in %, with 95 % intervals" in help_of("compare", capsys)
    for name, flag in [("train", "--monitor-n"), ("train", "--eval-n"), ("ssl", "--knn-n"), ("train", "--momentum"),
                       ("attack", "--device"), ("finetune", "--eval-n")]:  # fmt: skip
        after = help_of(name, capsys).split(f" {flag} ")[-1]
        assert "default" in after.split(" --")[0], (name, flag)


def test_one_meaning_per_flag_name_and_the_old_names_are_refused_naming_the_new(capsys, cli_error):
    parsers = subcommand_parsers()

    def parsed(command: str, *argv: str):
        return parsers[command].parse_args(list(argv))

    # attack names its attack as eval and transfer do: --attacks; the old --attack is refused in one line naming it
    base = ["--model", "zoo:fmnist-cnn", "--dataset", "fashion-mnist", "--eps", "0.1"]
    assert parsed("attack", *base, "--attacks", "pgd").attack == "pgd"
    assert "--attacks SPEC" in help_of("attack", capsys) and " --attack " not in help_of("attack", capsys)
    line = cli_error(["attack", *base, "--attack", "pgd"], "unrecognized argument --attack", "renamed --attacks")
    assert line.startswith("robustlab attack: error:"), line
    cli_error(["train", "--model", "cnn", "--amp"], "--amp", "renamed --precision fp16")
    cli_error(["finetune", "--pgd-steps=5"], "--pgd-steps", "renamed --eval-steps")
    # no unique prefixes: an abbreviation is not taken for the full name (--attac is not --attacks)
    cli_error(["attack", *base, "--attac", "pgd"], "--attacks")
    cli_error(["eval", *base, "--attack", "pgd"], "unrecognized arguments: --attack")
    # --steps is the steps of the attack a command runs (train's inner PGD too); finetune's evaluation has its own
    train = ["--method", "pgd", "--model", "cnn", "--dataset", "fashion-mnist", "--eps", "0.1"]
    assert parsed("train", *train, "--steps", "7").steps == 7
    tune = ["--encoder", "zoo:fmnist-cnn", "--protocol", "slf", "--dataset", "fashion-mnist"]
    assert parsed("finetune", *tune, "--eval-steps", "9").eval_steps == 9
    assert parsed("finetune", *tune).eval_steps == 20 and parsed("finetune", *tune).eval_restarts == 1
    # --targets means target models (transfer); pseudo-at's kind of pseudo-target is --pseudo-targets
    teacher = ["--teacher", "zoo:fmnist-cnn", "--dataset", "fashion-mnist", "--eps", "0.1"]
    assert parsed("pseudo-at", *teacher, "--pseudo-targets", "kmeans").targets == "kmeans"
    visible = {name: help_of(name, capsys) for name in parsers}
    assert [n for n, text in visible.items() if "--pgd-steps" in text] == []
    assert [n for n, text in visible.items() if " --targets " in text] == ["transfer"]
    # --image-size says the same everywhere (it is one rule: resize 256, crop 224 unless given)
    sizes = {n: t.split("--image-size PX ")[1].split(" --")[0] for n, t in visible.items() if "--image-size" in t}
    assert len(set(sizes.values())) == 1 and "256" in next(iter(sizes.values())), sizes


def test_missing_renamed_required_flags_are_one_line_errors(cli_error):
    cli_error(["attack", "--model", "zoo:fmnist-cnn", "--dataset", "fashion-mnist", "--eps", "0.1"], "--attacks")
    cli_error(["pseudo-at", "--teacher", "zoo:fmnist-cnn", "--dataset", "fashion-mnist", "--eps", "0.1"],
              "--pseudo-targets")  # fmt: skip


# Start-up (issue 25, item 9): the top-level help loads no torch; a subcommand loads only its own module.


def test_top_level_help_version_and_a_mistyped_command_load_no_torch():
    import subprocess
    import sys

    probe = (
        "import sys\nfrom robustlab.cli import main\n"
        "for argv in (['--help'], ['--version'], ['evl']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('loaded:', 'torch' in sys.modules, 'robustlab.cli.train' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "usage: robustlab" in done.stdout and "invalid choice: 'evl'" in done.stderr
    assert done.stdout.strip().endswith("loaded: False False"), done.stdout[-300:]
    named = "import sys\nfrom robustlab.cli import main\nmain(['eval', '--model', 'zoo:fmnist-cnn', '--eps', 'abc'])"
    done = subprocess.run([sys.executable, "-c", named + "\n"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "eps 'abc' is not a number" in done.stderr


def test_each_subcommand_says_the_one_line_help_the_top_level_lists(capsys):
    import argparse

    from robustlab.cli import SUBCOMMANDS, build_parser

    full = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {a.dest: a.help for a in full._choices_actions} == SUBCOMMANDS
    light = next(a for a in build_parser(None)._actions if isinstance(a, argparse._SubParsersAction))
    assert {a.dest: a.help for a in light._choices_actions} == SUBCOMMANDS
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in SUBCOMMANDS)
