"""Shared fixtures: the zoo models and small real Fashion-MNIST batches; every test runs in a temporary folder."""

from __future__ import annotations

import os

import pytest
import torch

from robustlab.data import load_dataset
from robustlab.models import load_model


@pytest.fixture(scope="session", autouse=True)
def _session_in_a_temporary_folder(tmp_path_factory):
    """Module and session fixtures run in a temporary folder too, never in the checkout."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(before)


@pytest.fixture(autouse=True)
def _in_a_temporary_folder(tmp_path, monkeypatch):
    """Each test runs in its own empty folder: a command without ``--out`` (``runs/attack``, ``runs/eval``) writes
    there, so nothing a user left in the checkout (or another test wrote) changes a test's outcome."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def fmnist_test():
    return load_dataset("fashion-mnist", "test")


@pytest.fixture(scope="session")
def fmnist_batch(fmnist_test):
    """The first 500 Fashion-MNIST test images and labels."""

    def take(n: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        return fmnist_test.images[:n].float() / 255, fmnist_test.labels[:n].clone()

    return take


@pytest.fixture(scope="session")
def zoo_cnn():
    return load_model("zoo:fmnist-cnn")


@pytest.fixture(scope="session")
def zoo_mlp():
    return load_model("zoo:fmnist-mlp")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op CPU thread (restored afterwards): for small tensors on a small, shared CPU, more threads only
    contend. Test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli_error(capsys):
    """``cli_error(argv, *words)`` runs ``robustlab argv`` in-process and asserts a user mistake's contract: exit
    code 2, exactly one stderr line (no traceback) that contains every one of ``words``; returns that line."""
    from robustlab.cli import main

    def run(argv: list[str], *words: str) -> str:
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, f"exit {code}, stderr: {err}"
        assert len(lines) == 1 and "Traceback" not in err, err
        for word in words:
            assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"
        return lines[0]

    return run


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say in one line at the end when the report.html browser tests were skipped (no chromium), so a green run
    does not hide that they never ran."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "headless browser" in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(
            f"note: {len(skipped)} report.html browser test(s) skipped: no headless browser; install chromium "
            "(apt-get install chromium, as .ci/run does) to run them"
        )
