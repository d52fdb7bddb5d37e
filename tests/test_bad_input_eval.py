"""Every bad input of ``attack``, ``eval``, ``transfer`` and ``zoo``: exit 2, one stderr line naming the problem,
no traceback, and nothing attacked or written first (the ``cli_error`` fixture asserts the contract)."""

from __future__ import annotations

import json

import pytest
import torch

from robustlab.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = ["--model", "zoo:fmnist-mlp"]
DATA = ["--dataset", "fashion-mnist", "--n", "8", "--no-progress"]
EVAL = ["eval", *MODEL, *DATA, "--eps", "0.05", "--attacks", "fgsm", "--sanity-n", "0", "--no-plots"]
ATTACK = ["attack", *MODEL, *DATA, "--eps", "0.05", "--attacks", "fgsm"]
TRANSFER = ["transfer", "--source", "zoo:fmnist-mlp", "--targets", "zoo:fmnist-cnn", *DATA, "--eps", "0.05",
            "--attacks", "fgsm"]  # fmt: skip
COMMANDS = {"eval": EVAL, "attack": ATTACK, "transfer": TRANSFER}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``empty``: an image folder without images; ``rgb``: 3-channel images; ``a_file``: a file, not a folder."""
    from PIL import Image

    root = tmp_path_factory.mktemp("inputs")
    (root / "empty" / "cls").mkdir(parents=True)
    for c in ("a", "b"):
        (root / "rgb" / c).mkdir(parents=True)
        Image.new("RGB", (32, 32), (200, 30, 30)).save(root / "rgb" / c / "img.png")
    (root / "a_file").write_text("not a folder")
    return root


def _cases(root) -> list[tuple[str, list[str], str]]:
    """(subcommand, extra arguments, a word the error line must hold) for the classes of bad input."""
    cases = []
    for command in COMMANDS:
        cases += [
            (command, ["--topk", "10"], "top-k"),  # k must be < 10 classes
            (command, ["--topk", "11"], "top-k"),
            (command, ["--topk", "0"], "k >= 1"),
            (command, ["--data-root", str(root / "nowhere")], "--data-root"),
            (command, ["--out", str(root / "a_file")], "is a file"),
            (command, ["--out", "/proc/robustlab-test"], "cannot be created"),
            (command, ["--dataset", f"imagefolder:{root / 'empty'}"], "holds no images"),
            (command, ["--dataset", "imagefolder:/nonexistent-robustlab"], "existing folder"),
            (command, ["--dataset", f"imagefolder:{root / 'rgb'}", "--n", "2"], "does not fit"),
            (command, ["--attacks", "deepfool"], "unknown attack"),
            (command, ["--eps", "abc"], "not a number"),
            (command, ["--norm", "l7"], "norm"),
            (command, ["--n", "0"], "out of range"),
            (command, ["--bounds", "1,0"], "LO < HI"),
            (command, ["--device", "tpu"], "unknown device"),
        ]
    for command in ("attack", "transfer"):
        cases += [
            (command, ["--save-adv", str(root)], "is a folder"),
            (command, ["--save-adv", str(root / "a_file" / "adv.pt")], "is a file"),
        ]
    cases += [
        ("eval", ["--model", "zoo:fmnist-cnn", "--dataset", f"imagefolder:{root / 'rgb'}", "--n", "2"], "does not fit"),
        ("eval", ["--sanity-n", "-1"], "--sanity-n"),
        ("eval", ["--attacks", "fgsm,fgsm"], "listed twice"),
        ("transfer", ["--attacks", "fgsm,fgsm"], "listed twice"),
        ("transfer", ["--targets", ","], "--targets is empty"),
        ("transfer", ["--source", ","], "--source is empty"),
        ("attack", ["--target", "12"], "out of range"),
        ("attack", ["--steps", "5"], "exactly one step"),
        ("attack", ["--model", "fixture_models:five_classes"], "5 classes"),
    ]
    return cases


CASE_IDS = [f"{c}{i}" for i, (c, *_) in enumerate(_cases(__import__("pathlib").Path("/x")))]


@pytest.mark.parametrize("index", range(len(CASE_IDS)), ids=CASE_IDS)
def test_bad_input_is_one_line_and_exit_2(index, folders, cli_error, tmp_path):
    command, extra, word = _cases(folders)[index]
    out = [] if "--out" in extra else ["--out", str(tmp_path / "out")]
    cli_error([*COMMANDS[command], *out, *extra], word)
    assert not (tmp_path / "out" / "report.json").exists()


def test_zoo_refuses_unknown_options(cli_error):
    cli_error(["zoo", "--bogus"], "unrecognized arguments")


def test_eval_refuses_a_malformed_run_record_and_a_truncated_batch(tmp_path, cli_error, monkeypatch, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    cli_error([*EVAL, "--out", tmp_path / "bad", "--resume"], "not valid JSON")
    (tmp_path / "bad" / "run.json").write_text(json.dumps({"kind": "eval"}))
    cli_error([*EVAL, "--out", tmp_path / "bad", "--resume"], "not a robustlab run record")

    import robustlab.executor as executor

    out = tmp_path / "run"
    with monkeypatch.context() as patch:  # the run stops after its batches: partial/ stays for --resume
        patch.setattr(executor, "write_html", lambda path: (_ for _ in ()).throw(KeyboardInterrupt))
        assert main([*EVAL, "--batch-size", "4", "--out", str(out)]) == 130
    capsys.readouterr()
    (out / ".files.jsonl").unlink()  # no recorded digests (an older robustlab's run): the loader is the guard
    batch = out / "partial" / "eps-0.05" / "batch00000.pt"
    batch.write_bytes(batch.read_bytes()[:100])  # a kill in the middle of a write (or a disk error)
    cli_error([*EVAL, "--batch-size", "4", "--out", out, "--resume"], "corrupt", "batch00000.pt", "delete it")


def test_outputs_are_checked_before_the_attack_runs(tmp_path, cli_error, monkeypatch):
    import robustlab.eval.evaluator as evaluator

    def never(*args, **kwargs):
        raise AssertionError("the attack ran before the output path was checked")

    monkeypatch.setattr(evaluator.Evaluator, "run_batch", never)
    cli_error([*ATTACK, "--out", tmp_path / "out", "--save-adv", tmp_path], "is a folder")
    cli_error([*TRANSFER, "--out", tmp_path / "out", "--save-adv", tmp_path], "is a folder")
    cli_error([*EVAL, "--topk", "10", "--out", tmp_path / "out"], "top-k")
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_output_that_is_not_writable(command, cli_error, tmp_path, monkeypatch):
    import os
    import types

    import robustlab.runs as runs

    # as root every folder is writable, so the permission answer is simulated
    monkeypatch.setattr(runs, "os", types.SimpleNamespace(**{**vars(os), "access": lambda *a, **k: False}))
    cli_error([*COMMANDS[command], "--out", tmp_path / "out"], "not writable")
    if command != "eval":  # past the run folder's check, --save-adv is checked on its own
        (tmp_path / "out").mkdir(exist_ok=True)
        monkeypatch.setattr(runs, "check_writable_folder", lambda path, flag="--out": path)
        argv = [*COMMANDS[command], "--out", tmp_path / "out", "--save-adv", tmp_path / "adv.pt"]
        cli_error(argv, "--save-adv", "not writable")
