"""The README stays true: every Python block runs as written, every shell block is either run here (in a fresh
folder, through the installed ``robustlab`` command) or marked ``# long:`` / ``# usage:`` on its first line, and the
demo's printed table is what ``make demo`` prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", README, re.S | re.M)]
MARKERS = ("# long:", "# usage:")  # not run: too long for the tests, or a synopsis with your own names


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCKS if lang == language]


def shell_blocks_to_run() -> list[str]:
    return [body for body in blocks("bash") if not body.startswith(MARKERS)]


def test_every_block_is_python_shell_or_output_and_every_marker_says_why():
    assert {lang for lang, _ in BLOCKS} <= {"python", "bash", "text"}, "a block without a language: say which"
    for body in blocks("bash"):
        first = body.splitlines()[0]
        if first.startswith(MARKERS):
            assert first.partition(":")[2].strip(), f"a marked block says why it is not run: {first!r}"
    assert len(blocks("python")) >= 4 and len(shell_blocks_to_run()) >= 2


def test_demo_command_is_the_makefiles():
    demo = re.search(r"^demo:.*?\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert demo, "Makefile lost its demo target"
    make_command = " ".join(demo.group(1).replace("\\\n", " ").replace("$(VENV)/bin/", "").split())
    assert make_command in [" ".join(body.split()) for body in shell_blocks_to_run()]


@pytest.mark.slow
def test_demo_prints_the_readme_table(monkeypatch, tmp_path, capsys):
    from robustlab.cli import main

    command = next(body for body in shell_blocks_to_run() if "runs/demo" in body)
    printed = next(body for lang, body in BLOCKS if lang == "text" and "runs/demo" in body)
    monkeypatch.chdir(tmp_path)
    assert main(command.split()[1:] + ["--no-progress"]) == 0
    out = capsys.readouterr().out
    strip_time = lambda text: [line for line in text.strip().splitlines() if "attack time" not in line]  # noqa: E731
    assert strip_time(out) == strip_time(printed)  # every number but the time, which depends on the machine


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs_as_written(index, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # blocks write their run folders under runs/
    namespace: dict = {}
    exec(compile(blocks("python")[index], f"README.md python block {index + 1}", "exec"), namespace)
    capsys.readouterr()
    if "Evaluator" in namespace and "report" in namespace:  # the attacks-and-evaluator example
        assert 0 <= namespace["report"].robust_accuracy < namespace["report"].clean_accuracy


@pytest.mark.slow
def test_shell_blocks_run_in_a_fresh_folder(tmp_path):
    """The unmarked shell blocks, in README order, in one folder (a later command takes an earlier one's run)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for body in shell_blocks_to_run():
        if "runs/demo" in body:
            continue  # test_demo_prints_the_readme_table runs it
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, f"{body}\n{done.stderr[-2000:]}"
    assert (tmp_path / "runs/first/model.pt").is_file() and (tmp_path / "runs/first-slf/report.json").is_file()
