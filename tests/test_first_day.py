"""A researcher's first day: what a new user does in the checkout never breaks the suite, and the commands speak one
language (issue 25)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from robustlab.cli import main

ROOT = Path(__file__).parents[1]


def test_each_test_runs_in_its_own_empty_folder(tmp_path):
    assert Path.cwd() == tmp_path and not any(tmp_path.iterdir())
    assert ROOT not in [Path.cwd(), *Path.cwd().parents]


def test_a_run_left_in_the_folder_where_pytest_starts_breaks_no_cli_test(tmp_path):
    """The README's SSL block runs ``robustlab attack`` without ``--out``, which leaves ``runs/attack`` holding a run
    where the user stands; the CLI tests started from that folder still pass (they run in their own folders)."""
    assert main(["attack", "--model", "zoo:fmnist-cnn", "--dataset", "fashion-mnist", "--n", "8", "--attack", "fgsm",
                 "--eps", "0.1", "--no-progress"]) == 0  # fmt: skip
    assert (tmp_path / "runs/attack/report.json").is_file()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "tests/test_cli_attack.py"), "-k", "bad_models or second_run",
         "-p", "no:cacheprovider", "-q", "--rootdir", str(ROOT)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "....." in done.stdout and "F" not in done.stdout.splitlines()[0]  # 5 tests ran, none failed
