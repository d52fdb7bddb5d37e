"""Every file robustlab reads goes through ``torch.load(weights_only=True)`` unless the user trusts it: a crafted
pickle placed anywhere robustlab reads never runs, and the command exits 2 with one line naming the problem."""

from __future__ import annotations

import ast
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from robustlab.cli import main
from robustlab.safe_load import python_objects_in, safe_load

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
    attack = ["attack", *DATA, "--n", "8", "--attacks", "fgsm", "--eps", "0.1", "--out", str(tmp_path / "a")]
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
        ["pseudo-at", "--teacher", str(evil), "--pseudo-targets", "embedding", "--eps", "0.1", *SMALL_TRAIN,
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
        "pseudo-at": ["pseudo-at", *teacher, "--pseudo-targets", "embedding", "--eps", "0.1", "--steps", "1"],
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
    # the run recorded last.pt's SHA-256: a replaced file is refused before it is read
    err = _refused(capsys, [*argv, "--resume"], hostile.marker, advice=False)
    assert "last.pt" in err and "SHA-256" in err
    _forget_digests(out)  # a folder of an older robustlab, without digests: the safe loader is the guard
    err = _refused(capsys, [*argv, "--resume"], hostile.marker)
    assert "last.pt" in err and "Python objects" in err
    (out / "last.pt").write_bytes(good[: len(good) // 2])  # a truncated checkpoint: corrupt, no trust advice
    err = _refused(capsys, [*argv, "--resume"], hostile.marker, advice=False)
    assert "corrupt" in err


def _forget_digests(folder: Path) -> None:
    """Make ``folder`` look like a run of an older robustlab: no manifest in run.json, no journal."""
    record = json.loads((folder / "run.json").read_text())
    record.pop("files", None)
    (folder / "run.json").write_text(json.dumps(record))
    (folder / ".files.jsonl").unlink(missing_ok=True)


def test_evaluator_batches_are_read_safely(tmp_path, capsys, hostile, monkeypatch):
    import robustlab.executor as executor

    argv = ["eval", "--model", "zoo:fmnist-mlp", *DATA, "--n", "20", "--batch-size", "10", "--eps", "0.05",
            "--attacks", "fgsm", "--sanity-n", "0", "--no-plots", "--out", str(tmp_path)]  # fmt: skip

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # stopped after its batches: partial/ stays for --resume

    with monkeypatch.context() as patch:
        patch.setattr(executor, "write_html", interrupted)
        assert main(argv) == 130
    capsys.readouterr()
    batches = sorted((tmp_path / "partial").rglob("batch*.pt"))
    assert len(batches) == 2
    assert isinstance(safe_load(tmp_path / "results.pt"), dict)
    hostile(batches[0])
    err = _refused(capsys, [*argv, "--resume"], hostile.marker, advice=False)
    assert "evaluation batch" in err and "SHA-256" in err
    _forget_digests(tmp_path)
    err = _refused(capsys, [*argv, "--resume"], hostile.marker)
    assert "evaluation batch" in err
    batches[0].write_bytes(os.urandom(300))
    _refused(capsys, [*argv, "--resume"], hostile.marker, advice=False)


def test_random_bytes_and_empty_files_get_no_trust_advice(tmp_path, capsys, hostile):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    base = ["attack", "--model", "fixture_models:linear_fmnist", *DATA, "--n", "8", "--attacks", "fgsm", "--eps", "0.1"]
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
    """Only ``robustlab.safe_load.safe_load`` calls ``torch.load``, and it passes ``weights_only=not trust``; nothing
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
    assert loads == {"safe_load.py": ["not trust"]}, loads
    assert not unpickles, unpickles


# ---------------------------------------------------------------------------------------------- links in run folders
# A run folder is written only through files robustlab creates itself: a link, hard link or FIFO planted where it
# writes is refused in one line before any byte is written, and the file it points to is left as it was.

ATTACK_ARGS = ["attack", "--model", "zoo:fmnist-mlp", *DATA, "--n", "8", "--attacks", "fgsm", "--eps", "0.1"]
EVAL_ARGS = ["eval", "--model", "zoo:fmnist-mlp", *DATA, "--n", "8", "--eps", "0.1", "--attacks", "fgsm",
             "--sanity-n", "0", "--no-plots"]  # fmt: skip
TRAIN_ARGS = ["train", "--model", "cnn", "--method", "fgsm", "--eps", "0.1", "--monitor-n", "0", "--no-eval",
              *SMALL_TRAIN]  # fmt: skip


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    return victim


@pytest.mark.parametrize("argv", [ATTACK_ARGS, EVAL_ARGS, TRAIN_ARGS], ids=["attack", "eval", "train"])
@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["fresh", "overwrite"])
def test_a_lock_planted_as_a_link_is_refused_and_its_target_untouched(tmp_path, cli_error, argv, extra):
    victim, out = _victim(tmp_path), tmp_path / "x"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    cli_error([*argv, "--out", out, *extra], ".lock", "link")
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("plant", ["hardlink", "fifo", "folder"])
def test_a_lock_that_is_not_a_plain_file_is_refused(tmp_path, cli_error, plant):
    victim, out = _victim(tmp_path), tmp_path / "x"
    out.mkdir()
    lock = out / ".lock"
    if plant == "hardlink":
        os.link(victim, lock)
    elif plant == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    cli_error([*ATTACK_ARGS, "--out", out], ".lock")
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["partial", "report.json", "metrics.jsonl", "tensorboard"])
def test_a_link_anywhere_in_a_run_folder_is_refused(tmp_path, cli_error, name):
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    (victim_dir / "keep.txt").write_text("precious\n")
    out = tmp_path / "x"
    out.mkdir()
    (out / name).symlink_to(victim_dir if name in ("partial", "tensorboard") else victim_dir / "keep.txt")
    cli_error([*EVAL_ARGS, "--out", out, "--overwrite"], name, "link")
    assert [p.name for p in victim_dir.iterdir()] == ["keep.txt"]
    assert (victim_dir / "keep.txt").read_text() == "precious\n"


def test_the_metrics_log_is_appended_without_following_a_link(tmp_path):
    from robustlab.errors import RobustlabError
    from robustlab.training.metrics import MetricsLogger

    victim = _victim(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").symlink_to(victim)
    logger = MetricsLogger(out)  # the atomic rewrite replaces the link itself with a new file
    logger.step(1, {"loss": 1.0})
    logger.close()
    assert victim.read_text() == "precious\n" and not (out / "metrics.jsonl").is_symlink()
    with pytest.raises(RobustlabError, match="is a file"):
        (out / "tensorboard").write_text("not a folder")
        MetricsLogger(out, tensorboard=True)


def test_atomic_writes_replace_a_link_and_never_write_through_it(tmp_path):
    from robustlab.io import atomic_write_bytes, write_json

    victim = _victim(tmp_path)
    link = tmp_path / "report.json"
    link.symlink_to(victim)
    write_json(link, {"a": 1})
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and link.read_text().startswith("{")
    atomic_write_bytes(link, b"x")
    assert victim.read_text() == "precious\n"


def test_every_write_in_the_library_goes_through_the_guarded_helpers():
    """The audit as a test: no library module opens a file for writing on its own (io.py holds the helpers)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "io.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            if name in ("write_text", "write_bytes") or (name == "open" and any(m and m[0] in "wax" for m in modes)):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
            if name == "open" and isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "os":
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} (os.open)")
    assert offenders == [], offenders
