"""Every file robustlab reads goes through ``torch.load(weights_only=True)`` unless the user trusts it: a crafted
pickle placed anywhere robustlab reads never runs, and the command exits 2 with one line naming the problem."""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import pytest
import torch

from robustlab.cli import main
from robustlab.io import python_objects_in, safe_load

pytestmark = pytest.mark.usefixtures("one_thread")
PACKAGE = Path(__file__).parents[1] / "robustlab"


class _Payload:
    """Unpickling this creates a folder: the proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture
def hostile(tmp_path):
    """``make(path, kind)`` writes a crafted file at ``path``: a ``torch.save`` archive or a bare pickle."""
    marker = tmp_path / "PWNED"

    def make(path: Path, kind: str = "torch") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"model_state": _Payload(marker), "arch": "cnn", "model": _Payload(marker)}
        if kind == "torch":
            torch.save(payload, path)
        else:
            path.write_bytes(pickle.dumps(payload))
        return path

    make.marker = marker
    return make


def _refused(capsys, argv: list[str], marker: Path, advice: bool = True) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own one-line errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert not marker.exists(), "the crafted pickle was unpickled"
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert ("--trust-checkpoint" in err) == advice, err
    return err


DATA = ["--dataset", "fashion-mnist", "--no-progress"]
SMALL_TRAIN = [*DATA, "--n", "64", "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "32"]


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_crafted_model_files_never_run(tmp_path, capsys, hostile, kind):
    evil = hostile(tmp_path / f"evil-{kind}.pt", kind)
    folder = tmp_path / "run"
    hostile(folder / "model.pt", kind)
    attack = ["attack", *DATA, "--n", "8", "--attack", "fgsm", "--eps", "0.1", "--out", str(tmp_path / "a")]
    cases = [
        ["attack", "--model", "fixture_models:linear_fmnist", "--checkpoint", str(evil), *attack[1:]],
        ["attack", "--model", str(evil), *attack[1:]],
        ["eval", "--model", str(evil), *DATA, "--n", "8", "--eps", "0.1", "--sanity-n", "0", "--out",
         str(tmp_path / "e")],
        ["transfer", "--source", str(evil), "--targets", "zoo:fmnist-mlp", *DATA, "--n", "8", "--eps", "0.1",
         "--out", str(tmp_path / "t")],
        ["transfer", "--source", "zoo:fmnist-mlp", "--targets", str(evil), *DATA, "--n", "8", "--eps", "0.1",
         "--out", str(tmp_path / "t2")],
        ["train", "--method", "fgsm", "--model", str(evil), "--eps", "0.1", *SMALL_TRAIN,
         "--out", str(tmp_path / "tr")],
        ["train", "--method", "fgsm", "--model", "fixture_models:linear_fmnist", "--checkpoint", str(evil),
         "--eps", "0.1", *SMALL_TRAIN, "--out", str(tmp_path / "tr2")],
        ["ssl", "--model", str(evil), "--knn-n", "0", *SMALL_TRAIN, "--out", str(tmp_path / "s")],
        ["deacl", "--teacher", str(folder), "--eps", "0.1", *SMALL_TRAIN, "--out", str(tmp_path / "d")],
        ["pseudo-at", "--teacher", str(evil), "--targets", "embedding", "--eps", "0.1", *SMALL_TRAIN,
         "--out", str(tmp_path / "p")],
        ["finetune", "--encoder", str(folder), "--protocol", "slf", "--eps", "0.1", *SMALL_TRAIN,
         "--out", str(tmp_path / "f")],
    ]  # fmt: skip
    for argv in cases:
        _refused(capsys, argv, hostile.marker)


def _training_runs(tmp_path: Path) -> dict[str, list[str]]:
    """One tiny run of every training command (the teacher of deacl/pseudo-at/finetune is the zoo's SSL encoder)."""
    teacher = ["--teacher", "zoo:fmnist-simclr-slf"]
    return {
        "train": ["train", "--method", "fgsm", "--model", "cnn", "--eps", "0.1", "--monitor-n", "0", "--no-eval"],
        "ssl": ["ssl", "--model", "cnn", "--knn-n", "0"],
        "deacl": ["deacl", *teacher, "--eps", "0.1", "--steps", "1"],
        "pseudo-at": ["pseudo-at", *teacher, "--targets", "embedding", "--eps", "0.1", "--steps", "1"],
        "finetune": ["finetune", "--encoder", "zoo:fmnist-simclr-slf", "--protocol", "slf", "--eval-n", "0"],
    }


@pytest.mark.parametrize("command", ["train", "ssl", "deacl", "pseudo-at", "finetune"])
def test_resume_reads_last_pt_safely(tmp_path, capsys, hostile, command):
    out = tmp_path / command
    argv = [*_training_runs(tmp_path)[command], *SMALL_TRAIN, "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    # our own checkpoint is plain data: the safe loader takes it
    assert isinstance(safe_load(out / "last.pt"), dict)
    good = (out / "last.pt").read_bytes()
    hostile(out / "last.pt")
    err = _refused(capsys, [*argv, "--resume"], hostile.marker)
    assert "last.pt" in err and "Python objects" in err
    (out / "last.pt").write_bytes(good[: len(good) // 2])  # a truncated checkpoint: corrupt, no trust advice
    err = _refused(capsys, [*argv, "--resume"], hostile.marker, advice=False)
    assert "corrupt" in err


def test_evaluator_batches_are_read_safely(tmp_path, capsys, hostile):
    argv = ["eval", "--model", "zoo:fmnist-mlp", *DATA, "--n", "20", "--batch-size", "10", "--eps", "0.05",
            "--attacks", "fgsm", "--sanity-n", "0", "--no-plots", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    batches = sorted((tmp_path / "partial").rglob("batch*.pt"))
    assert len(batches) == 2
    assert isinstance(safe_load(tmp_path / "results.pt"), dict)
    hostile(batches[0])
    err = _refused(capsys, [*argv, "--resume"], hostile.marker)
    assert "evaluation batch" in err
    batches[0].write_bytes(os.urandom(300))
    _refused(capsys, [*argv, "--resume"], hostile.marker, advice=False)


def test_random_bytes_and_empty_files_get_no_trust_advice(tmp_path, capsys, hostile):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    base = ["attack", "--model", "fixture_models:linear_fmnist", *DATA, "--n", "8", "--attack", "fgsm", "--eps", "0.1"]
    for path, words in ((noise, "corrupt"), (empty, "empty")):
        err = _refused(capsys, [*base, "--checkpoint", str(path), "--out", str(tmp_path)], hostile.marker, advice=False)
        assert words in err
    assert python_objects_in(noise) is None
    assert python_objects_in(hostile(tmp_path / "evil.pt")) in ("posix.mkdir", "nt.mkdir")


def test_trusted_whole_module_files_load(tmp_path, zoo_cnn, fmnist_batch):
    """``torch.save(model)`` needs Python objects: refused by default, loaded with trust."""
    from robustlab import CheckpointError
    from robustlab.models import load_model

    path = tmp_path / "whole.pt"
    torch.save(zoo_cnn, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_model(str(path))
    x, _ = fmnist_batch(8)
    assert torch.allclose(load_model(str(path), trust_checkpoint=True)(x), zoo_cnn(x))


def test_no_unsafe_load_in_the_package():
    """Only ``robustlab.io.safe_load`` calls ``torch.load``, and it passes ``weights_only=not trust``; nothing
    unpickles directly (calls found in the syntax tree, so docstrings do not count)."""
    loads, unpickles = {}, []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = ast.unparse(node.func.value)
            if owner == "torch" and node.func.attr == "load":
                kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
                loads.setdefault(path.relative_to(PACKAGE).as_posix(), []).append(kwargs.get("weights_only"))
            if owner in ("pickle", "dill", "joblib") and node.func.attr in ("load", "loads", "Unpickler"):
                unpickles.append(f"{path}:{node.lineno}")
    assert loads == {"io.py": ["not trust"]}, loads
    assert not unpickles, unpickles
