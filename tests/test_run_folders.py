"""Run folders that fail safe: ``--overwrite`` builds the new run beside ``--out`` and replaces the earlier run only
when it has finished, deletes only the files the earlier run listed, every file a run writes has its SHA-256 recorded
and checked when read back, a full disk is one line, and a finished folder keeps neither its lock nor its
per-batch cache."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustlab import RobustlabError
from robustlab.cli import main
from robustlab.eval import EvalConfig, run_evaluation
from robustlab.io import atomic_torch_save, atomic_write_bytes, write_json
from robustlab.run_files import verify
from robustlab.runs import RunFolder

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = ["--dataset", "fashion-mnist", "--no-progress"]
SMALL = [*DATA, "--n", "64", "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "32"]
TEACHER = ["--teacher", "zoo:fmnist-simclr-slf"]
TRAINING = {
    "train": ["train", "--method", "fgsm", "--model", "cnn", "--eps", "0.1", "--monitor-n", "0", "--no-eval"],
    "ssl": ["ssl", "--model", "cnn", "--knn-n", "0"],
    "deacl": ["deacl", *TEACHER, "--eps", "0.1", "--steps", "1"],
    "pseudo-at": ["pseudo-at", *TEACHER, "--pseudo-targets", "embedding", "--eps", "0.1", "--steps", "1"],
    "finetune": ["finetune", "--encoder", "zoo:fmnist-simclr-slf", "--protocol", "slf", "--eval-n", "0"],
}
EVAL = ["eval", "--model", "zoo:fmnist-mlp", *DATA, "--n", "16", "--batch-size", "8", "--eps", "0.05",
        "--attacks", "fgsm", "--sanity-n", "0", "--no-plots"]  # fmt: skip
ATTACK = ["attack", "--model", "zoo:fmnist-mlp", *DATA, "--n", "8", "--attacks", "fgsm", "--eps", "0.1"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the SHA-256 of its bytes."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def siblings(folder: Path) -> list[str]:
    """Whatever robustlab left beside ``folder`` (staging or replaced folders)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(folder.name + "."))


def flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


def stop_after_batches(monkeypatch) -> None:
    """Stop an evaluation after its batches (as a Ctrl-C would), before it writes its report."""
    import robustlab.executor as executor

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(executor, "write_html", interrupted)


# ------------------------------------------------------------------------ item 2: --overwrite never loses a run


@pytest.mark.parametrize("command", list(TRAINING))
def test_a_failed_overwrite_leaves_the_earlier_training_run_as_it_was(tmp_path, cli_error, monkeypatch, command):
    import robustlab.training.run as training_run

    out = tmp_path / "run"
    argv = [*TRAINING[command], *SMALL, "--out", str(out)]
    assert main(argv) == 0
    before = snapshot(out)
    assert "model.pt" in before and ".lock" not in before

    def broken(*args, **kwargs):
        raise RobustlabError("the training failed")

    monkeypatch.setattr(training_run, "train", broken)
    cli_error([*argv, "--overwrite"], "the training failed")
    assert snapshot(out) == before and siblings(out) == []


def test_overwrite_with_a_model_that_does_not_load_keeps_the_earlier_run(tmp_path, cli_error):
    out = tmp_path / "r"
    argv = [*TRAINING["train"], *SMALL, "--out", str(out)]
    assert main(argv) == 0
    before = snapshot(out)
    bad = [a if a != "cnn" else "zoo:nosuch" for a in argv]
    cli_error([*bad, "--overwrite"], "nosuch")
    assert snapshot(out) == before and siblings(out) == []


def test_a_failed_eval_overwrite_keeps_the_earlier_eval(tmp_path, zoo_mlp, fmnist_batch, monkeypatch):
    import robustlab.eval.run as eval_run

    x, y = fmnist_batch(16)
    config = EvalConfig(eps=0.05, attacks="fgsm", sanity_n=0, batch_size=8, plots=False)
    run_evaluation(zoo_mlp, (x, y), config, tmp_path / "e")
    before = snapshot(tmp_path / "e")

    def broken(*args, **kwargs):  # a model that fails after the probe, in the middle of the attacks
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(eval_run.Evaluator, "run_batch", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        run_evaluation(zoo_mlp, (x, y), config, tmp_path / "e", overwrite=True)
    assert snapshot(tmp_path / "e") == before and siblings(tmp_path / "e") == []


def test_a_successful_overwrite_replaces_the_run_and_its_report_names_the_final_files(tmp_path, zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(16)
    out = tmp_path / "e"
    run_evaluation(zoo_mlp, (x, y), EvalConfig(eps=0.05, attacks="fgsm", sanity_n=0, plots=False), out)
    config = EvalConfig(eps=(0.02, 0.05), attacks="fgsm", sanity_n=0, plots=False)
    report = run_evaluation(zoo_mlp, (x, y), config, out, overwrite=True)
    saved = json.loads((out / "report.json").read_text())
    assert saved["eps"] == [0.02, 0.05] and siblings(out) == []
    for path in [*report.files.values(), *saved["files"].values()]:
        assert Path(path).parent == out and Path(path).is_file(), path
    names = ["report.html", "report.json", "report.md", "results.pt", "run.json"]
    assert sorted(p.name for p in out.iterdir()) == names


HOLD = """
import sys, time
from robustlab.io import write_json
from robustlab.runs import RunFolder
with RunFolder(sys.argv[1], "eval", {"seed": 1}, overwrite=True) as run:
    write_json(run.path / "report.json", {"new": True})
    print(run.path, flush=True)
    time.sleep(60)
"""


def test_a_failed_attack_overwrite_keeps_the_earlier_attack(tmp_path, monkeypatch):
    import robustlab.eval.attack_run as attack_run

    out = tmp_path / "a"
    assert main([*ATTACK, "--out", str(out)]) == 0
    before = snapshot(out)

    def broken(*args, **kwargs):
        raise RuntimeError("the model failed in the middle of the attack")

    monkeypatch.setattr(attack_run.Evaluator, "run", broken)
    with pytest.raises(RuntimeError, match="middle of the attack"):
        main([*ATTACK, "--out", str(out), "--overwrite"])
    assert snapshot(out) == before and siblings(out) == []


def test_a_killed_overwrite_leaves_the_earlier_run_and_the_next_run_clears_its_staging(tmp_path):
    out = tmp_path / "r"
    with RunFolder(out, "eval", {"seed": 0}) as run:
        write_json(run.path / "report.json", {"old": True})
    before = snapshot(out)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        staging = Path(holder.stdout.readline().strip())
        assert staging.parent == out.parent and staging.name.startswith("r.staging-")
        # while it builds beside out, out is locked: a second run is refused naming the holder
        with pytest.raises(RobustlabError, match=f"in use by another robustlab run \\(PID {holder.pid}\\)"):
            RunFolder(out, "eval", {"seed": 2}, overwrite=True).__enter__()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the earlier run, exactly as it was (beside the lock file the killed run held: nothing can remove it)
    assert {k: v for k, v in snapshot(out).items() if k != ".lock"} == before
    assert siblings(out) == [staging.name]  # the killed run's staging folder
    with RunFolder(out, "eval", {"seed": 3}, overwrite=True) as run:
        write_json(run.path / "report.json", {"newest": True})
    assert siblings(out) == [] and json.loads((out / "report.json").read_text()) == {"newest": True}


def test_overwrite_of_the_current_folder_keeps_the_folder_itself(tmp_path, monkeypatch):
    """``--out .``: the folder the process (and the user's shell) stands in is not swapped away; the earlier run's
    files move out and the new run's move in."""
    out = tmp_path / "here"
    assert main([*EVAL, "--out", str(out)]) == 0
    identity = out.stat().st_ino
    monkeypatch.chdir(out)
    assert main([*EVAL, "--n", "8", "--out", ".", "--overwrite"]) == 0
    assert out.stat().st_ino == identity and Path.cwd() == out and siblings(out) == []
    assert json.loads((out / "report.json").read_text())["n"] == 8 and not (out / ".lock").exists()
    verify(out)


# ------------------------------------------------------------------- item 3: --overwrite deletes only a run's files


def test_overwrite_refuses_a_folder_holding_files_its_run_did_not_write(tmp_path, cli_error):
    out = tmp_path / "r"
    argv = [*EVAL, "--out", str(out)]
    assert main(argv) == 0
    (out / "notes.txt").write_text("my notes\n")
    (out / "src").mkdir()
    (out / "src" / "model.py").write_text("print()\n")
    before = snapshot(out)
    cli_error([*argv, "--overwrite"], "notes.txt", "did not write", "move it away")
    (out / "notes.txt").unlink()
    cli_error([*argv, "--overwrite"], "src")
    assert snapshot(out) == {k: v for k, v in before.items() if k != "notes.txt"}


def test_overwrite_refuses_a_run_that_lists_no_files(tmp_path, cli_error):
    """A run folder of an older robustlab (run.json without a manifest, or only legacy files) cannot tell its
    files from the user's: refused, saying what to do."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "run.json").write_text(json.dumps({"kind": "eval", "fingerprint": {}}))
    (old / "report.json").write_text("{}")
    cli_error([*EVAL, "--out", old, "--overwrite"], "does not list its files", "delete the folder yourself")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "last.pt").write_bytes(b"x")
    cli_error([*EVAL, "--out", legacy, "--overwrite"], "does not list its files")
    assert (old / "report.json").exists() and (legacy / "last.pt").exists()


def test_the_manifest_lists_every_file_the_run_wrote_with_its_digest(tmp_path):
    out = tmp_path / "r"
    assert main([*TRAINING["train"], *SMALL, "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    files = snapshot(out)
    assert record["files"] == {k: v for k, v in files.items() if k != "run.json"}
    assert {"model.pt", "last.pt", "metrics.jsonl", "history.json", "report.json"} <= set(record["files"])


def test_overwrite_of_a_killed_run_removes_what_its_journal_lists(tmp_path, monkeypatch, cli_error):
    out = tmp_path / "r"
    with monkeypatch.context() as patch:
        stop_after_batches(patch)
        assert main([*EVAL, "--out", str(out)]) == 130
    assert (out / "partial").is_dir() and (out / ".files.jsonl").is_file()
    assert main([*EVAL, "--n", "8", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "report.json").read_text())["n"] == 8 and not (out / "partial").exists()


def test_files_robustlab_rewrites_in_a_finished_run_stay_the_runs_own(tmp_path, monkeypatch):
    import robustlab.reports.rebuild as rebuild

    out = tmp_path / "e"
    assert main([*EVAL, "--out", str(out)]) == 0
    (out / "notes.md").write_text("mine\n")
    # a newer robustlab renders report.md differently: `robustlab report` rewrites it in the finished folder
    monkeypatch.setattr(rebuild, "report_markdown", lambda data: "# rendered again\n")
    assert main(["report", str(out)]) == 0
    verify(out)  # the manifest follows the rewrite
    files = json.loads((out / "run.json").read_text())["files"]
    assert files["report.md"] == hashlib.sha256(b"# rendered again\n").hexdigest() and "notes.md" not in files


# --------------------------------------------------------------- item 9: digests recorded and checked when read


def test_a_flipped_bit_in_the_weights_of_a_model_file_is_refused(tmp_path, zoo_cnn):
    from robustlab.models import load_model, save_model

    path = tmp_path / "model.pt"
    header = save_model(path, zoo_cnn, "cnn", dataset="fashion-mnist")
    assert len(header["weights_sha256"]) == 64
    saved = torch.load(path, weights_only=True)
    name = next(iter(saved["state_dict"]))
    saved["state_dict"][name].view(-1)[0] += 1e-3  # what a flipped bit in the tensor data does
    torch.save(saved, path)
    with pytest.raises(RobustlabError, match="weights do not match the SHA-256"):
        load_model(str(path))
    with pytest.raises(RobustlabError, match="weights do not match the SHA-256"):
        load_model("cnn", checkpoint=str(path))
    load_model("zoo:fmnist-cnn")  # the zoo's files record no digest: accepted


def test_a_changed_file_of_a_finished_run_is_refused_when_read(tmp_path, cli_error):
    out = tmp_path / "r"
    argv = [*TRAINING["train"], *SMALL, "--epochs", "2", "--out", str(out)]
    assert main([*argv[:-2], "--epochs", "1", "--out", str(out)]) == 0
    good = (out / "model.pt").read_bytes()
    flip_byte(out / "model.pt")
    cli_error([*ATTACK, "--model", out, "--out", tmp_path / "a"], "model.pt", "SHA-256")
    with pytest.raises(RobustlabError, match="model.pt"):
        verify(out)
    (out / "model.pt").write_bytes(good)
    verify(out)
    flip_byte(out / "last.pt", 0.9)
    cli_error([*argv[:-2], "--epochs", "1", "--out", out, "--resume"], "last.pt", "SHA-256")


def test_a_changed_batch_of_an_interrupted_eval_is_refused_on_resume(tmp_path, monkeypatch, cli_error, capsys):
    out = tmp_path / "r"
    with monkeypatch.context() as patch:
        stop_after_batches(patch)
        assert main([*EVAL, "--out", str(out)]) == 130
    capsys.readouterr()
    batch = next((out / "partial").rglob("batch00001.pt"))
    flip_byte(batch)
    cli_error([*EVAL, "--out", out, "--resume"], "batch00001.pt", "SHA-256", "delete it")
    batch.unlink()
    assert main([*EVAL, "--out", str(out), "--resume"]) == 0


# --------------------------------------------------------------------------- item 4: a full disk is one line


def test_a_full_disk_is_one_line_naming_the_folder(tmp_path, monkeypatch, cli_error):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RobustlabError, match="no space left on the device: cannot write x.pt .* into '.*full'"):
        atomic_torch_save({"w": torch.zeros(1000)}, tmp_path / "full" / "x.pt")
    assert list((tmp_path / "full").iterdir()) == []  # nothing half-written
    cli_error([*EVAL, "--out", tmp_path / "run"], "no space left", "run.json", str(tmp_path / "run"))
    cli_error([*EVAL, "--out", tmp_path / "run"], "no space left")  # nothing was left behind to block the folder
    monkeypatch.undo()
    with RunFolder(tmp_path / "q", "eval", {}) as run, monkeypatch.context() as patch:
        patch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.EDQUOT, "quota")))
        with pytest.raises(RobustlabError, match="disk quota exceeded: cannot write .files.jsonl"):
            atomic_write_bytes(run.path / "a.txt", b"abc")  # its journal line is an os.write


# ------------------------------------------------------------- item 5: user mistakes refused before the work


def test_export_to_a_folder_is_refused_before_training(tmp_path, cli_error, monkeypatch):
    import robustlab.training.run as training_run

    monkeypatch.setattr(training_run, "train", lambda *a, **k: pytest.fail("trained before --export was checked"))
    argv = [*TRAINING["train"], *SMALL, "--out", str(tmp_path / "r")]
    cli_error([*argv, "--export", tmp_path], "--export", "is a folder")
    cli_error([*argv, "--export", tmp_path / "r" / "model.pt"], "--export", "the run writes itself")
    assert not (tmp_path / "r").exists()


def test_save_adv_equal_to_out_or_one_of_its_files_is_refused_at_once(tmp_path, cli_error, monkeypatch):
    import robustlab.eval.attack_run as attack_run

    monkeypatch.setattr(attack_run, "resolve_model", lambda *a, **k: pytest.fail("loaded before the check"))
    out = tmp_path / "a"
    cli_error([*ATTACK, "--out", out, "--save-adv", out], "--save-adv", "is the run folder --out itself")
    cli_error([*ATTACK, "--out", out, "--save-adv", out / "report.json"], "the run writes itself")
    assert not out.exists()


def test_save_adv_inside_out_arrives_with_a_replacing_run(tmp_path):
    out = tmp_path / "a"
    assert main([*ATTACK, "--out", str(out)]) == 0
    assert main([*ATTACK, "--out", str(out), "--overwrite", "--save-adv", str(out / "adv.pt")]) == 0
    assert torch.load(out / "adv.pt", weights_only=True)["x_adv"].shape[0] == 8
    assert "adv.pt" in json.loads((out / "run.json").read_text())["files"] and siblings(out) == []


def test_invalid_utf8_in_the_metrics_log_is_a_cut_line(tmp_path, cli_error):
    from robustlab.training.metrics import read_metrics

    (tmp_path / "metrics.jsonl").write_bytes(b'{"kind": "step", "step": 1}\n\xff\xfe{"kind"\n{"kind": "step"}\n')
    assert read_metrics(tmp_path) == [{"kind": "step", "step": 1}]
    out = tmp_path / "r"
    argv = [*TRAINING["train"], *SMALL, "--out", str(out)]
    assert main(argv) == 0
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b"\xff\xfe\n")
    cli_error([*argv, "--resume"], "metrics", "SHA-256")  # a finished run's log: refused in one line


def test_a_run_refused_at_its_start_does_not_block_the_folder(tmp_path, cli_error, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the package is not installed
    out = tmp_path / "r"
    argv = [*TRAINING["train"], *SMALL, "--out", str(out)]
    cli_error([*argv, "--tensorboard"], "--tensorboard needs the tensorboard package")
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    cli_error([*argv, "--tensorboard"], "--tensorboard")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # what the user had, and nothing of the failed run
    assert main(argv) == 0  # the corrected command


# ----------------------------------------------------- issue 25 item 13: a finished folder keeps no lock or cache


def test_a_finished_run_keeps_neither_its_lock_nor_its_batch_cache(tmp_path, monkeypatch):
    out = tmp_path / "e"
    with monkeypatch.context() as patch:
        stop_after_batches(patch)
        assert main([*EVAL, "--out", str(out)]) == 130
    assert (out / "partial").is_dir()  # an interrupted run keeps what --resume continues from
    assert main([*EVAL, "--out", str(out), "--resume"]) == 0
    assert not (out / "partial").exists() and not (out / ".lock").exists() and not (out / ".files.jsonl").exists()
    assert main([*TRAINING["train"], *SMALL, "--out", str(tmp_path / "t")]) == 0
    assert not (tmp_path / "t" / ".lock").exists()
