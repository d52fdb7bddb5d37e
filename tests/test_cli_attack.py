"""``robustlab attack`` end to end, and one clear line + exit code 2 for every user mistake."""

import json
import os
import subprocess
import sys

import pytest
import torch

from robustlab import ThreatModel
from robustlab.attacks import PGD
from robustlab.cli import main
from robustlab.eval import Evaluator
from robustlab.runs import RunFolder

BASE = ["attack", "--model", "zoo:fmnist-cnn", "--dataset", "fashion-mnist", "--no-progress"]


def test_attack_writes_report_and_adversarial_examples(tmp_path, capsys):
    adv = tmp_path / "adv.pt"
    code = main(
        [*BASE, "--n", "200", "--attacks", "pgd", "--eps", "0.1", "--out", str(tmp_path), "--save-adv", str(adv)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "robust accuracy" in printed and "clean accuracy" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n"] == 200
    assert report["robust_accuracy"] < report["clean_accuracy"] - 0.5
    assert 0 < report["attack_success_rate"] <= 1
    assert report["config"]["eps"] == 0.1 and report["attack"]["attack"] == "pgd"
    assert report["environment"]["torch"] == torch.__version__ and report["wall_time_s"] > 0
    saved = torch.load(adv, weights_only=True)
    assert saved["x_adv"].shape == (200, 1, 28, 28) and saved["x_adv"].dtype == torch.float32
    assert saved["x_adv"].min() >= 0 and saved["x_adv"].max() <= 1
    assert torch.equal(saved["index"], torch.arange(200))
    # the saved examples reproduce the reported robust accuracy
    from robustlab.models import load_model

    model = load_model("zoo:fmnist-cnn")
    with torch.no_grad():
        acc = (model(saved["x_adv"]).argmax(1) == saved["y"]).float().mean().item()
    assert acc == pytest.approx(report["robust_accuracy"], abs=1e-6)


def test_fgsm_with_fraction_eps_and_l2(tmp_path):
    assert main([*BASE, "--n", "64", "--attacks", "fgsm", "--eps", "8/255", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["threat"]["eps"] == pytest.approx(8 / 255)
    l2 = [*BASE, "--n", "64", "--attacks", "pgd", "--norm", "l2", "--eps", "1.0", "--out", str(tmp_path), "--overwrite"]
    assert main(l2) == 0


def test_a_second_run_on_the_same_out_needs_overwrite(tmp_path, cli_error):
    args = [*BASE, "--n", "8", "--attacks", "fgsm", "--eps", "0.1", "--out", str(tmp_path)]
    assert main(args) == 0
    first = (tmp_path / "report.json").read_text()
    # refused before the model loads (a model that does not exist is not even looked at)
    cli_error([*args, "--eps", "0.2", "--model", "zoo:nope"], "already holds a run", "--overwrite")
    assert (tmp_path / "report.json").read_text() == first
    # with --overwrite a bad model is refused before the earlier run is cleared: nothing lost
    cli_error([*args, "--eps", "0.2", "--model", "zoo:nope", "--overwrite"], "nope")
    assert (tmp_path / "report.json").read_text() == first
    assert main([*args, "--eps", "0.2", "--overwrite"]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["threat"]["eps"] == 0.2


def test_a_folder_another_run_holds_is_refused_naming_it(tmp_path, cli_error):
    with RunFolder(tmp_path, "attack", {}):  # a run in progress on --out
        args = [*BASE, "--n", "8", "--attacks", "fgsm", "--eps", "0.1", "--out", str(tmp_path), "--overwrite"]
        cli_error(args, "in use by another robustlab run", f"PID {os.getpid()}")
    assert not (tmp_path / "report.json").exists()


def test_targeted_from_cli(tmp_path, capsys):
    args = [*BASE, "--n", "64", "--attacks", "pgd", "--eps", "0.2", "--steps", "20", "--target", "random"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["attack_success_rate"] > 0.8


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--attacks", "deepfool", "--eps", "0.1"], "unknown attack"),
        (["--attacks", "pgd", "--loss", "hinge", "--eps", "0.1"], "unknown loss"),
        (["--attacks", "pgd", "--norm", "l7", "--eps", "0.1"], "unknown norm"),
        (["--attacks", "pgd", "--eps", "-0.1"], "eps must be"),
        (["--attacks", "pgd", "--eps", "0.1", "--step-size", "0"], "must be > 0"),
        (["--attacks", "pgd", "--eps", "0.1", "--n", "20000"], "out of range"),
        (["--attacks", "pgd", "--eps", "0.1", "--n", "0"], "out of range"),
        (["--attacks", "pgd", "--eps", "0.1", "--bounds", "0.2,0.8"], "outside the bounds"),
        (["--attacks", "fgsm", "--eps", "0.1", "--steps", "5"], "exactly one step"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        code = main([*BASE, "--n", "16", *extra])
        raise SystemExit(code)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "zoo:fmnist-cnn", "--dataset", "imagenet21k"], "unknown dataset"),
        (["--model", "fixture_models:feature_map", "--dataset", "fashion-mnist"], "logits of shape"),
        (["--model", "fixture_models:five_classes", "--dataset", "fashion-mnist"], "5 classes"),
        (
            [
                "--model",
                "fixture_models:linear_fmnist",
                "--checkpoint",
                "/nonexistent.pt",
                "--dataset",
                "fashion-mnist",
            ],
            "does not exist",
        ),
    ],
)
def test_bad_models_and_data_exit_2(capsys, args, message):
    code = main(["attack", *args, "--n", "32", "--attacks", "pgd", "--eps", "0.1", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_corrupt_checkpoint_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    code = main(
        [
            "attack",
            "--model",
            "fixture_models:linear_fmnist",
            "--checkpoint",
            str(bad),
            "--dataset",
            "fashion-mnist",
            "--n",
            "8",
            "--attacks",
            "fgsm",
            "--eps",
            "0.1",
            "--no-progress",
        ]
    )
    assert code == 2 and "corrupt" in capsys.readouterr().err


def test_train_mode_model_gets_a_warning(zoo_cnn, fmnist_batch, caplog):
    x, y = fmnist_batch(16)
    zoo_cnn.train()
    try:
        Evaluator([PGD(steps=1)], ThreatModel("linf", 0.1)).run(zoo_cnn, (x, y))
    finally:
        zoo_cnn.eval()
    assert "train mode" in caplog.text


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "robustlab", "attack", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--eps" in out.stdout
