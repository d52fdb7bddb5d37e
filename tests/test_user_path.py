"""The newcomer's path (issue 13), walked as a user walks it, in a fresh folder: train a tiny model through the
installed ``robustlab`` command, then attack, evaluate, transfer and fine-tune it by its file and by its folder;
bring a ``mymodel.py``; a 3-class torchvision model on generated PNGs; AutoAttack on a few samples; --version; zoo."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from robustlab.cli import main
from robustlab.models import MODEL_FORMAT, build_model, load_model, save_model

ROBUSTLAB = str(Path(sys.executable).parent / "robustlab")  # the installed console script
TINY = ["--dataset", "fashion-mnist", "--no-progress"]
MYMODEL = """from torch import nn


def factory(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))
"""


def robustlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``robustlab ARGS`` as a user types it, in ``cwd``, without PYTHONPATH; must succeed."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([ROBUSTLAB, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return out


def report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny FGSM-RS model trained through the installed command: 256 images, 1 epoch, 16 evaluation images."""
    home = tmp_path_factory.mktemp("user")
    robustlab("train", "--method", "fgsm-rs", "--model", "cnn", "--eps", "0.1", "--n", "256", "--epochs", "1",
              "--eval-n", "16", "--monitor-n", "0", "--out", "runs/na", *TINY, cwd=home)  # fmt: skip
    return home


@pytest.mark.slow
def test_a_trained_model_file_describes_itself(trained):
    saved = torch.load(trained / "runs/na/model.pt", weights_only=True)  # no pickled objects
    assert saved["format"] == MODEL_FORMAT and saved["arch"] == "cnn" and saved["num_classes"] == 10
    assert saved["dataset"] == "fashion-mnist" and saved["input_shape"] == [1, 28, 28]
    assert saved["normalization"]["mean"] == pytest.approx([0.2860]) and saved["command"].startswith("robustlab train")
    assert report(trained / "runs/na")["evaluation"]["n"] == 16  # --eval-n sizes the final evaluation


@pytest.mark.slow
def test_attack_takes_the_trained_model_by_file_and_by_folder(trained):
    for name, spec in (("by-file", "runs/na/model.pt"), ("by-folder", "runs/na")):
        robustlab("attack", "--model", spec, "--n", "32", "--attacks", "pgd", "--eps", "0.1", "--out", f"runs/{name}",
                  *TINY, cwd=trained)  # fmt: skip
    by_file, by_folder = report(trained / "runs/by-file"), report(trained / "runs/by-folder")
    assert by_file["clean_accuracy"] == by_folder["clean_accuracy"] > 0.1  # trained: above chance
    assert by_file["robust_accuracy"] == by_folder["robust_accuracy"] <= by_file["clean_accuracy"]
    # the model file is also a checkpoint for its architecture, as before
    old_way = load_model("zoo:fmnist-cnn", checkpoint=trained / "runs/na/model.pt")
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(old_way(x), load_model(str(trained / "runs/na"))(x))


@pytest.mark.slow
def test_eval_transfer_and_finetune_take_the_run_folder(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    assert main(["eval", "--model", "runs/na", "--n", "16", "--eps", "0.1", "--attacks", "fgsm", "--sanity-n", "0",
                 "--no-plots", "--out", "runs/eval", *TINY]) == 0  # fmt: skip
    assert main(["transfer", "--source", "runs/na/model.pt", "--targets", "runs/na,zoo:fmnist-cnn", "--n", "16",
                 "--eps", "0.1", "--attacks", "fgsm", "--out", "runs/transfer", *TINY]) == 0  # fmt: skip
    assert main(["finetune", "--encoder", "runs/na", "--protocol", "slf", "--n", "128", "--epochs", "1",
                 "--eval-n", "8", "--eps", "0.1", "--out", "runs/slf", *TINY]) == 0  # fmt: skip
    assert main(["attack", "--model", "runs/slf", "--n", "8", "--attacks", "fgsm", "--eps", "0.1", "--out",
                 "runs/slf-attack", *TINY]) == 0  # fmt: skip
    capsys.readouterr()
    assert report(trained / "runs/eval")["n"] == 16
    assert torch.load(trained / "runs/slf/model.pt", weights_only=True)["stage"] == "finetune-slf"


@pytest.mark.slow
def test_own_module_from_the_current_folder(tmp_path):
    (tmp_path / "mymodel.py").write_text(MYMODEL)
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).state_dict(), tmp_path / "w.pt")
    robustlab("attack", "--model", "mymodel:factory", "--checkpoint", "w.pt", "--n", "8", "--attacks", "fgsm",
              "--eps", "0.1", "--out", "runs/mine", *TINY, cwd=tmp_path)  # fmt: skip
    no_weights = robustlab("attack", "--model", "mymodel:factory", "--n", "8", "--attacks", "fgsm", "--eps", "0.1",
                           "--out", "runs/random", *TINY, cwd=tmp_path)  # fmt: skip
    warning = [line for line in no_weights.stderr.splitlines() if "WARNING" in line]
    assert len(warning) == 1 and "--checkpoint" in warning[0] and "random" in warning[0]


def test_own_module_import_restores_sys_path_and_says_where_it_looked(tmp_path, monkeypatch, cli_error):
    (tmp_path / "mymodel_e13.py").write_text(MYMODEL)
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    assert isinstance(load_model("mymodel_e13:factory", num_classes=3), nn.Module)
    assert sys.path == before
    monkeypatch.chdir(tmp_path.parent)
    cli_error(["attack", "--model", "not_here_e13:factory", "--n", "4", "--attacks", "fgsm", "--eps", "0.1",
               *TINY], "current folder", str(tmp_path.parent))  # fmt: skip


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory) -> Path:
    """``imgs/{a,b,c}/*.png``: three classes of random 40x40 RGB images."""
    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    for c in "abc":
        (root / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "imgs" / c / f"{i}.png")
    return root


@pytest.mark.slow
def test_three_class_torchvision_model_on_an_image_folder(png_folder, monkeypatch, capsys, cli_error):
    import torchvision

    monkeypatch.chdir(png_folder)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), "r18.pt")
    common = ["--checkpoint", "r18.pt", "--dataset", "imagefolder:imgs", "--image-size", "32", "--attacks", "fgsm",
              "--eps", "0.03", "--no-progress"]  # fmt: skip
    line = cli_error(["attack", "--model", "torchvision:resnet18", *common], "fc.weight", "(3, 512)", "--num-classes")
    assert "Normalize" not in line
    assert main(["attack", "--model", "torchvision:resnet18", "--num-classes", "3", *common, "--out", "runs/tv"]) == 0
    assert "clean accuracy" in capsys.readouterr().out
    assert report(png_folder / "runs/tv")["n"] == 9


def test_image_folder_size_channels_and_one_class_warning(png_folder, tmp_path, caplog):
    from robustlab.data import load_dataset, num_classes_of

    grey = load_dataset(f"imagefolder:{png_folder / 'imgs'}", image_size=16, channels=1)
    assert grey[0][0].shape == (1, 16, 16) and num_classes_of(grey) == 3
    (tmp_path / "val" / "n01").mkdir(parents=True)  # a val/ folder above the class folders: taken as one class
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "val" / "n01" / "0.png")
    with caplog.at_level(logging.WARNING):
        one = load_dataset(f"imagefolder:{tmp_path}")
    assert one.classes == ["val"] and "one class folder" in caplog.text


def test_cluster_head_is_refused_against_class_labels(tmp_path, cli_error):
    """A pseudo-AT model with 50 k-means outputs is not a 10-class classifier: refused, not scored at 2 %."""
    save_model(tmp_path / "model.pt", build_model("cnn", num_classes=50), "cnn", dataset="fashion-mnist")
    assert load_model(str(tmp_path))(torch.rand(2, 1, 28, 28)).shape == (2, 50)  # it loads, as an encoder may
    cli_error(["attack", "--model", tmp_path, "--n", "4", "--attacks", "fgsm", "--eps", "0.1", *TINY],
              "50 outputs", "10 classes", "finetune")  # fmt: skip


def test_bare_state_dict_and_pickled_module_say_how_to_load(tmp_path, cli_error, capsys):
    torch.save(build_model("cnn").state_dict(), tmp_path / "bare.pt")
    cli_error(["attack", "--model", tmp_path / "bare.pt", "--n", "4", "--attacks", "fgsm", "--eps", "0.1", *TINY],
              "no architecture", "--checkpoint")  # fmt: skip
    torch.save(build_model("cnn"), tmp_path / "whole.pt")  # torch.save(model)
    cli_error(["attack", "--model", tmp_path / "whole.pt", "--n", "4", "--attacks", "fgsm", "--eps", "0.1", *TINY],
              "--trust-checkpoint")  # fmt: skip
    argv = ["attack", "--model", tmp_path / "whole.pt", "--trust-checkpoint", "--n", "4", "--attacks", "fgsm", "--eps",
            "0.1", "--out", tmp_path / "out", *TINY]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    capsys.readouterr()


def test_folder_without_model_file_is_one_line(tmp_path, cli_error):
    cli_error(["attack", "--model", tmp_path, "--n", "4", "--attacks", "fgsm", "--eps", "0.1", *TINY], "no model.pt")


@pytest.mark.slow
def test_autoattack_spec_on_a_few_samples(tmp_path, capsys):
    pytest.importorskip("pyautoattack")
    argv = ["attack", "--model", "zoo:fmnist-cnn", "--n", "4", "--attacks", "autoattack:apgd-ce", "--eps", "0.1",
            "--out", tmp_path, *TINY]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    capsys.readouterr()
    result = report(tmp_path)
    assert result["n"] == 4 and result["robust_accuracy"] <= result["clean_accuracy"]


@pytest.mark.slow
def test_version_and_zoo_through_the_installed_command(tmp_path):
    assert robustlab("--version", cwd=tmp_path).stdout.startswith("robustlab ")
    listing = robustlab("zoo", cwd=tmp_path).stdout
    assert "zoo:fmnist-cnn " in listing and "zoo:fmnist-deacl-slf" in listing


def test_slf_default_learning_rate_trains_sanely(tmp_path, capsys):
    """SLF over the zoo's DeACL encoder: the default (0.03, shown in the banner) gives a sane first-epoch loss."""
    argv = ["finetune", "--encoder", "zoo:fmnist-deacl-slf", "--protocol", "slf", "--n", "2000", "--epochs", "1",
            "--eval-n", "0", "--out", tmp_path, *TINY]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    assert "sgd lr 0.03" in capsys.readouterr().out
    done = report(tmp_path)
    assert done["config"]["lr"] == 0.03 and done["history"][0]["loss"] < 2.3  # chance level is ln 10 = 2.30


def test_progress_counts_samples_and_names_the_attack(fmnist_batch, zoo_cnn, capsys):
    """A run of fewer samples than a batch still moves: the bar counts samples and names the attack at work."""
    from robustlab import ThreatModel
    from robustlab.attacks import PGD
    from robustlab.eval import Evaluator

    x, y = fmnist_batch(12)
    Evaluator({"pgd-x": PGD(steps=3, restarts=2)}, ThreatModel("linf", 0.01), progress="final evaluation").run(
        zoo_cnn, (x, y)
    )
    bar = capsys.readouterr().err.replace("\r", "\n")
    assert "final evaluation" in bar and "/12 " in bar and "sample" in bar and "batch" not in bar  # 12 samples
    assert "pgd-x on 11 samples, 2 restarts" in bar or "pgd-x on 12 samples, 2 restarts" in bar
    assert "forward passes" in bar


def test_encoder_without_a_trained_head_is_warned_about(tmp_path, capsys):
    save_model(tmp_path / "model.pt", build_model("cnn"), "cnn", dataset="fashion-mnist", stage="deacl")
    argv = ["attack", "--model", tmp_path, "--n", "4", "--attacks", "fgsm", "--eps", "0.1", "--out", tmp_path / "a",
            *TINY]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "never saw a label" in warning[0] and "robustlab finetune --encoder" in warning[0]


def test_train_on_an_image_folder_then_attack_without_repeating_its_size(png_folder, tmp_path, monkeypatch, capsys):
    """A fresh cnn gets the folder's 3 classes and 32-px inputs; its model file tells attack the image size."""
    monkeypatch.chdir(png_folder)
    data = ["--dataset", "imagefolder:imgs", "--no-progress"]
    assert main(["train", "--method", "fgsm-rs", "--model", "cnn", *data, "--image-size", "32", "--eps", "0.03",
                 "--epochs", "1", "--eval-n", "0", "--monitor-n", "0", "--out", str(tmp_path / "if")]) == 0  # fmt: skip
    saved = torch.load(tmp_path / "if/model.pt", weights_only=True)
    assert saved["num_classes"] == 3 and saved["input_shape"] == [3, 32, 32]
    assert main(["attack", "--model", str(tmp_path / "if"), *data, "--attacks", "fgsm", "--eps", "0.03", "--out",
                 str(tmp_path / "if-attack")]) == 0  # fmt: skip
    capsys.readouterr()
    assert report(tmp_path / "if-attack")["n"] == 9


def test_mean_without_std_is_one_line(cli_error):
    cli_error(["attack", "--model", "zoo:fmnist-cnn", "--mean", "0.5", "--n", "4", "--attacks", "fgsm", "--eps", "0.1",
               *TINY], "--mean and --std")  # fmt: skip
