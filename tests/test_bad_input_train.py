"""Every bad input of the training commands (train, ssl, deacl, pseudo-at, finetune) is refused in-process before
any work, with exit code 2 and exactly one stderr line naming the problem (the ``cli_error`` fixture), and a resumed
run must have been started with the same arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from robustlab.cli import main
from robustlab.models import build_model
from robustlab.ssl import save_classifier

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--dataset", "fashion-mnist", "--n", "64", "--epochs", "1", "--max-steps-per-epoch", "1",
         "--batch-size", "32", "--no-progress"]  # fmt: skip
TEACHER = ["--teacher", "zoo:fmnist-simclr-slf"]
COMMANDS = {
    "train": ["train", "--method", "fgsm", "--model", "cnn", "--eps", "0.1", "--monitor-n", "0", "--no-eval"],
    "ssl": ["ssl", "--model", "cnn", "--knn-n", "0"],
    "deacl": ["deacl", *TEACHER, "--eps", "0.1", "--steps", "1"],
    "pseudo-at": ["pseudo-at", *TEACHER, "--pseudo-targets", "embedding", "--eps", "0.1", "--steps", "1"],
    "finetune": ["finetune", "--encoder", "zoo:fmnist-simclr-slf", "--protocol", "slf", "--eval-n", "0"],
}


def raising() -> nn.Module:
    """A model factory with a bug (``--model test_bad_input_train:raising``)."""
    raise KeyError("num_layers")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Model files a careless user may pass: empty, a bad state, another dataset's (CIFAR-10) architecture."""
    root = tmp_path_factory.mktemp("files")
    (root / "empty.pt").write_bytes(b"")
    torch.save({"fc.weight": torch.zeros(10, 128)}, root / "state_dict.pt")  # weights without an architecture
    torch.save({"model_state": {"conv.weight": torch.zeros(1)}, "arch": "cnn", "dataset": "fashion-mnist"},
               root / "bad_state.pt")  # fmt: skip
    save_classifier(root / "cifar.pt", build_model("cnn", "cifar10"), "cnn", "cifar10")
    return root


def _cases(f) -> list[tuple[str, list[str], tuple[str, ...]]]:
    """``(command, extra arguments, words the error line must contain)``: every bad input, per command."""
    model_files = [
        (["--model", str(f / "empty.pt")], ("empty",)),
        (["--model", str(f / "bad_state.pt")], ("does not fit",)),
        (["--model", str(f / "state_dict.pt")], ("no architecture", "--checkpoint")),
        (["--model", str(f / "cifar.pt")], ("does not take", "images")),
        (["--model", "test_bad_input_train:raising"], ("raised KeyError", "num_layers")),
    ]
    teacher_files = [(["--teacher", a[1]], w) for a, w in model_files]
    encoder_files = [(["--encoder", a[1]], w) for a, w in model_files]
    shared = [
        (["--lr", "-1"], ("--lr", "must be > 0")),
        (["--lr", "nan"], ("--lr", "finite")),
        (["--momentum", "-1"], ("--momentum", "must be >= 0")),
        (["--momentum", "1.5"], ("momentum", "[0, 1)")),
        (["--weight-decay", "-0.1"], ("--weight-decay", ">= 0")),
        (["--batch-size", "0"], ("--batch-size", ">= 1")),
        (["--epochs", "0"], ("--epochs", ">= 1")),
    ]
    per_command = {
        "train": [
            *model_files,
            (["--step-size", "-0.1"], ("--step-size", "must be > 0")),
            (["--noise-sigma", "nan"], ("--noise-sigma", "finite")),
            (["--noise-sigma", "-1"], ("--noise-sigma", ">= 0")),
            (["--method", "n-fgsm", "--noise-multiple", "-1"], ("--noise-multiple", ">= 0")),
            (["--method", "n-fgsm", "--noise-multiple", "inf"], ("--noise-multiple", "finite")),
            (["--gradalign-lambda", "-1"], ("--gradalign-lambda", ">= 0")),
            (["--monitor-n", "-1"], ("--monitor-n", ">= 0")),
            (["--monitor-every", "-3"], ("--monitor-every", ">= 0")),
            (["--eval-n", "-5"], ("--eval-n", ">= 0")),
            (["--eps", "nan"], ("eps", "finite")),
            (["--bounds", "0,inf"], ("--bounds", "finite")),
            (["--method", "fgsm-foo"], ("unknown method",)),
            (["--method", "pgd", "--noise-sigma", "2"], ("does not take noise_sigma",)),
            (["--checkpoint", str(f / "empty.pt"), "--model", "fixture_models:linear_fmnist"], ("empty",)),
            (["--model", "fixture_models:five_classes"], ("5 outputs", "10 classes")),
        ],
        "ssl": [
            *model_files,
            (["--batch-size", "1"], ("--batch-size must be >= 2",)),
            (["--knn-n", "-1"], ("--knn-n", ">= 0")),
            (["--temperature", "0"], ("--temperature", "> 0")),
            (["--tau-beta", "-1"], ("--tau-beta", "> 0")),
        ],
        "deacl": [
            *teacher_files,
            (["--beta", "-1"], ("--beta", ">= 0")),
            (["--beta", "nan"], ("--beta", "finite")),
            (["--step-size", "-0.1"], ("--step-size", "must be > 0")),
            (["--init", "imagenet"], ("--init",)),
        ],
        "pseudo-at": [
            *teacher_files,
            (["--beta", "-1"], ("--beta", ">= 0")),
            (["--clusters", "3"], ("--clusters only applies",)),
            (["--pseudo-targets", "kmeans", "--clusters", "1"], ("k-means needs", "k=1")),
            (["--kmeans-n", "0"], ("--kmeans-n", ">= 1")),
            (["--step-size", "-0.1"], ("--step-size", "must be > 0")),
        ],
        "finetune": [
            *encoder_files,
            (["--protocol", "aff", "--eps", "0.1", "--beta", "-1"], ("--beta", ">= 0")),
            (["--eval-n", "-1"], ("--eval-n", ">= 0")),
            (["--protocol", "alf"], ("give --eps",)),
            (["--eval-steps", "0"], ("--eval-steps", ">= 1")),
        ],
    }
    return [(c, args, words) for c, cases in per_command.items() for args, words in [*cases, *shared]]


CASES = _cases(Path("FILES"))  # FILES: the bad_files folder, filled in by the test


@pytest.mark.parametrize(("command", "extra", "words"), CASES, ids=[f"{c}:{' '.join(a)}" for c, a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(tmp_path, cli_error, bad_files, command, extra, words):
    extra = [a.replace("FILES", str(bad_files)) for a in extra]
    argv = [*COMMANDS[command], *SMALL, *extra, "--out", str(tmp_path / "run")]
    cli_error(argv, *words)
    assert not (tmp_path / "run" / "last.pt").exists()  # refused before any work


def test_every_command_has_bad_input_cases():
    counts = {c: sum(1 for command, _, _ in CASES if command == c) for c in COMMANDS}
    assert all(n >= 10 for n in counts.values()), counts


# --------------------------------------------------------------------------------------------- resume mismatch

CHANGES = {  # an argument that changes the result, per command
    "train": ["--lr", "0.05"],
    "ssl": ["--temperature", "0.5"],
    "deacl": ["--beta", "1.0"],
    "pseudo-at": ["--seed", "1"],
    "finetune": ["--weight-decay", "0.001"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_resume_with_other_arguments_is_refused_naming_them(tmp_path, cli_error, capsys, command):
    argv = [*COMMANDS[command], *SMALL, "--out", str(tmp_path / command)]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    flag, value = CHANGES[command]
    name = flag.removeprefix("--").replace("-", "_")
    cli_error([*argv, flag, value, "--resume"], "different", name, "--resume needs the same arguments")
    assert main([*argv, "--resume"]) == 0  # the same arguments resume (nothing left to train)


# ------------------------------------------------------------------------------------------ damaged checkpoints


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_last_pt_is_one_line(tmp_path, cli_error, capsys, damage):
    argv = [*COMMANDS["train"], *SMALL, "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    capsys.readouterr()
    last = tmp_path / "run" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"")
    cli_error([*argv, "--resume"], "last.pt", "corrupt" if damage == "truncated" else "empty")


def test_non_finite_loss_stops_with_one_line(tmp_path, cli_error):
    argv = [*COMMANDS["train"], "--dataset", "fashion-mnist", "--n", "256", "--batch-size", "32", "--lr", "1e30"]
    cli_error([*argv, "--method", "standard", "--no-progress", "--out", str(tmp_path / "run")], "non-finite", "--lr")
    assert not (tmp_path / "run" / "model.pt").exists()
