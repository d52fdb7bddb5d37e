"""One run per output folder: an OS lock for the run's life, no silent overwrite, resume only with the same
settings -- for ``eval`` and every training command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from robustlab import RobustlabError
from robustlab.cli import main
from robustlab.io import write_json
from robustlab.runs import RunFolder

pytestmark = pytest.mark.usefixtures("one_thread")

HOLD = """
import sys, time
from robustlab.runs import RunFolder
with RunFolder(sys.argv[1], "eval", {"seed": 0}):
    print("locked", flush=True)
    time.sleep(60)
"""


def _one_line_error(capsys, argv: list[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_a_second_run_on_a_locked_folder_is_refused_naming_the_holder(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["eval", "--model", "zoo:fmnist-mlp", "--dataset", "fashion-mnist", "--n", "8", "--eps", "0.05",
                "--attacks", "fgsm", "--sanity-n", "0", "--no-plots", "--no-progress",
                "--out", str(tmp_path)]  # fmt: skip
        for extra in ([], ["--resume"], ["--overwrite"]):
            err = _one_line_error(capsys, [*argv, *extra])
            assert f"PID {holder.pid}" in err and "in use" in err
        assert json.loads((tmp_path / "run.json").read_text())["fingerprint"] == {"seed": 0}  # nothing touched
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops the lock with the process: a killed run can be resumed
    with RunFolder(tmp_path, "eval", {"seed": 0}, resume=True) as run:
        assert run.resumed


def test_a_finished_eval_is_not_overwritten_without_overwrite(tmp_path, capsys):
    argv = ["eval", "--model", "zoo:fmnist-mlp", "--dataset", "fashion-mnist", "--n", "16", "--eps", "0.05",
            "--attacks", "fgsm", "--sanity-n", "0", "--no-plots", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    first = (tmp_path / "report.json").read_text()
    err = _one_line_error(capsys, [*argv[:-2], "--n", "32", "--out", str(tmp_path)])
    assert "already holds a run" in err and "--overwrite" in err
    assert (tmp_path / "report.json").read_text() == first
    assert main([*argv[:-2], "--n", "32", "--overwrite", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["n"] == 32
    err = _one_line_error(capsys, [*argv, "--resume", "--overwrite"])
    assert "contradict" in err


def test_stale_sanity_flags_are_not_reused(tmp_path, capsys, monkeypatch):
    import robustlab.eval.run as eval_run

    argv = ["eval", "--model", "zoo:fmnist-mlp", "--dataset", "fashion-mnist", "--n", "16", "--eps", "0.05",
            "--attacks", "fgsm", "--no-plots", "--no-progress", "--out", str(tmp_path)]  # fmt: skip

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # the run stops after its sanity checks, as a Ctrl-C would stop it

    with monkeypatch.context() as patch:
        patch.setattr(eval_run, "_evaluate", interrupted)
        assert main([*argv, "--sanity-n", "8"]) == 130
        assert main([*argv, "--sanity-n", "12", "--resume"]) == 130
    assert len(list((tmp_path / "partial").glob("sanity-*.json"))) == 2  # one cache per setting, none reused
    assert main([*argv, "--sanity-n", "12", "--resume"]) == 0
    assert not (tmp_path / "partial").exists()  # a finished run keeps no cache that only serves a resume


def _training(command: str) -> list[str]:
    small = ["--dataset", "fashion-mnist", "--n", "64", "--epochs", "2", "--max-steps-per-epoch", "1",
             "--batch-size", "32", "--no-progress"]  # fmt: skip
    teacher = ["--teacher", "zoo:fmnist-simclr-slf"]
    return {
        "train": ["train", "--method", "fgsm", "--model", "cnn", "--eps", "0.1", "--monitor-n", "0", "--no-eval"],
        "ssl": ["ssl", "--model", "cnn", "--knn-n", "0"],
        "deacl": ["deacl", *teacher, "--eps", "0.1", "--steps", "1"],
        "pseudo-at": ["pseudo-at", *teacher, "--pseudo-targets", "embedding", "--eps", "0.1", "--steps", "1"],
        "finetune": ["finetune", "--encoder", "zoo:fmnist-simclr-slf", "--protocol", "slf", "--eval-n", "0"],
    }[command] + small


@pytest.mark.parametrize("command", ["train", "ssl", "deacl", "pseudo-at", "finetune"])
def test_training_resume_refuses_other_settings(tmp_path, capsys, command):
    argv = [*_training(command), "--out", str(tmp_path)]
    assert main([*argv, "--epochs", "1"]) == 0
    capsys.readouterr()
    for changed, value in (("--seed", "3"), ("--lr", "0.0123"), ("--epochs", "2")):
        err = _one_line_error(capsys, [*argv, "--epochs", "1", "--resume", changed, value])
        assert "holds a run with different" in err and changed[2:].replace("-", "_") in err
    if command == "train":
        err = _one_line_error(capsys, [*argv, "--epochs", "1", "--resume", "--method", "fgsm-rs"])
        assert "method" in err
        err = _one_line_error(capsys, [*argv, "--epochs", "1", "--resume", "--eps", "0.2"])
        assert "eps" in err
    err = _one_line_error(capsys, [*argv, "--epochs", "1"])
    assert "already holds a run" in err
    assert main([*argv, "--epochs", "1", "--resume"]) == 0  # the same settings: accepted


def test_resume_of_an_empty_folder_and_bad_out_paths(tmp_path, capsys):
    base = _training("train")
    err = _one_line_error(capsys, [*base, "--out", str(tmp_path / "new"), "--resume"])
    assert "holds no run" in err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file" in _one_line_error(capsys, [*base, "--out", str(a_file)])
    assert "cannot be created" in _one_line_error(capsys, [*base, "--out", "/proc/robustlab-test"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    assert "not valid JSON" in _one_line_error(capsys, [*base, "--out", str(tmp_path / "bad"), "--resume"])


def test_run_folder_api(tmp_path):
    with RunFolder(tmp_path, "train", {"lr": 0.1}) as run:
        assert not run.resumed and (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RobustlabError, match="in use"):
            RunFolder(tmp_path, "train", {"lr": 0.1}, resume=True).__enter__()
    assert not (tmp_path / ".lock").exists()  # a finished run leaves no lock file behind
    with pytest.raises(RobustlabError, match="holds a 'train' run, not 'eval'"):
        RunFolder(tmp_path, "eval", {"lr": 0.1}, resume=True).__enter__()


def test_precheck_refuses_what_entering_would_without_taking_or_changing_the_folder(tmp_path):
    missing = tmp_path / "new"
    RunFolder(missing, "attack", {}).precheck()
    assert not missing.exists()  # nothing created: entering does that
    with RunFolder(tmp_path, "attack", {"eps": 0.1}) as run:
        write_json(run.path / "report.json", {})  # a file the run writes (through robustlab.io)
        with pytest.raises(RobustlabError, match="in use by another robustlab run"):
            RunFolder(tmp_path, "attack", {}, overwrite=True).precheck()
    with pytest.raises(RobustlabError, match="already holds a run"):
        RunFolder(tmp_path, "attack", {}).precheck()
    RunFolder(tmp_path, "attack", {}, overwrite=True).precheck()
    assert (tmp_path / "report.json").exists()  # overwrite clears only on entering
