"""The README and the pages of docs/ stay true: every Python block runs as written, every shell block is either run
here (in a fresh folder, through the installed ``robustlab`` command) or marked ``# long:`` / ``# usage:`` on its first
line, every link to a page or a section of it leads somewhere, and the demo's printed table is what ``make demo``
prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = {p.relative_to(ROOT).as_posix(): p.read_text() for p in [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))]}
MARKERS = ("# long:", "# usage:")  # not run: too long for the tests, or a synopsis with your own names


def code_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block of a Markdown page."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.S | re.M)]


BLOCKS = code_blocks(PAGES["README.md"])


def blocks(language: str, page: str = "README.md") -> list[str]:
    return [body for lang, body in code_blocks(PAGES[page]) if lang == language]


def shell_blocks_to_run(page: str = "README.md") -> list[str]:
    return [body for body in blocks("bash", page) if not body.startswith(MARKERS)]


@pytest.mark.parametrize("page", PAGES)
def test_every_block_is_python_shell_or_output_and_every_marker_says_why(page):
    languages = {lang for lang, _ in code_blocks(PAGES[page])}
    assert languages <= {"python", "bash", "text"}, f"{page}: a block without a language: say which"
    for body in blocks("bash", page):
        first = body.splitlines()[0]
        if first.startswith(MARKERS):
            assert first.partition(":")[2].strip(), f"{page}: a marked block says why it is not run: {first!r}"
    if page == "README.md":
        assert len(blocks("python")) >= 4 and len(shell_blocks_to_run()) >= 2


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES)
def test_every_link_leads_to_a_page_and_section_that_exist(page):
    """What moved out of the README is linked, and a link to a section names one that is there."""
    for target in re.findall(r"\]\(([^)\s]+)\)", PAGES[page]):
        if "://" in target:
            continue
        file, _, section = target.partition("#")
        path = (ROOT / page).parent / file if file else ROOT / page
        assert path.exists(), f"{page} links to {target!r}: no such file"
        if section:
            headings = re.findall(r"^#+ (.*)$", path.read_text(), re.M)
            assert section in {anchor(h) for h in headings}, f"{page} links to {target!r}: no such section"


def test_the_readme_links_every_page_of_docs():
    targets = re.findall(r"\]\((docs/[^)\s]+)\)", PAGES["README.md"])
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in targets}
    assert {(ROOT / page).resolve() for page in PAGES if page.startswith("docs/")} <= linked


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
@pytest.mark.parametrize("page, index", [(page, i) for page in PAGES for i in range(len(blocks("python", page)))])
def test_python_block_runs_as_written(page, index, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # blocks write their run folders under runs/
    namespace: dict = {}
    exec(compile(blocks("python", page)[index], f"{page} python block {index + 1}", "exec"), namespace)
    capsys.readouterr()
    if "Evaluator" in namespace and "report" in namespace:  # the attacks-and-evaluator example
        assert 0 <= namespace["report"].robust_accuracy < namespace["report"].clean_accuracy


def run_shell(body: str, folder: Path) -> subprocess.CompletedProcess:
    """One shell block as a user runs it: the installed ``robustlab`` command, the checkout not on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.mark.slow
def test_shell_blocks_run_in_a_fresh_folder(tmp_path):
    """The unmarked shell blocks, in README order, in one folder (a later command takes an earlier one's run)."""
    for body in shell_blocks_to_run():
        if "runs/demo" in body:
            continue  # test_demo_prints_the_readme_table runs it
        done = run_shell(body, tmp_path)
        assert done.returncode == 0, f"{body}\n{done.stderr[-2000:]}"
    assert (tmp_path / "runs/first/model.pt").is_file() and (tmp_path / "runs/first-slf/report.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page in PAGES if page != "README.md" and shell_blocks_to_run(page)])
def test_shell_blocks_of_docs_run_in_a_fresh_folder(page, tmp_path):
    """A page of docs/ runs its unmarked shell blocks in order, in a folder of its own."""
    for body in shell_blocks_to_run(page):
        done = run_shell(body, tmp_path)
        assert done.returncode == 0, f"{page}: {body}\n{done.stderr[-2000:]}"
