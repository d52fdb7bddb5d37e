"""What a run evaluates is what it names: ``--resume`` is keyed by the content actually loaded (weights, images),
and a model made for other data (its recorded dataset, input shape or channels) is refused in one line naming the
fix before any attack runs."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from PIL import Image

from robustlab.errors import RobustlabError
from robustlab.eval import DataSource, EvalConfig, ModelSource, run_evaluation
from robustlab.eval.sources import data_digest, resolve_data, resolve_model
from robustlab.models import build_model, load_model, save_model
from robustlab.models.digest import state_dict_digest

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = EvalConfig(eps=0.1, attacks="fgsm", sanity_n=0, plots=False, batch_size=8)
FMNIST = DataSource("fashion-mnist", n=16)


def _model_file(path, spec: str) -> None:
    save_model(path, load_model(spec), "cnn" if "cnn" in spec else "mlp", dataset="fashion-mnist")


# --- item 5: resume keyed by content --------------------------------------------------------------------------


def test_state_dict_digest_is_the_weights_not_their_name():
    a, b = load_model("zoo:fmnist-cnn"), load_model("zoo:fmnist-cnn")
    assert state_dict_digest(a.state_dict()) == state_dict_digest(b.state_dict())
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6  # one weight, nudged
    assert state_dict_digest(a.state_dict()) != state_dict_digest(b.state_dict())
    assert len(state_dict_digest({"w": torch.ones(2, dtype=torch.bfloat16), "n": torch.tensor(3)})) == 64


def test_resume_refuses_a_model_file_replaced_in_the_run_folder(tmp_path):
    """RUNDIR/model.pt replaced by another model: a fresh fingerprint, not the old model's cached batches."""
    run = tmp_path / "trained"
    run.mkdir()
    _model_file(run / "model.pt", "zoo:fmnist-cnn")
    first = run_evaluation(ModelSource(str(run)), FMNIST, CONFIG, tmp_path / "ev")
    again = run_evaluation(ModelSource(str(run)), FMNIST, CONFIG, tmp_path / "ev", resume=True)
    assert again.results[0].clean_accuracy == first.results[0].clean_accuracy  # same model: resumes
    _model_file(run / "model.pt", "zoo:fmnist-mlp")
    with pytest.raises(RobustlabError, match="model_state_sha256"):
        run_evaluation(ModelSource(str(run)), FMNIST, CONFIG, tmp_path / "ev", resume=True)


def test_resume_refuses_weights_changed_under_a_factory_that_loads_them(tmp_path, monkeypatch):
    """A spec whose weights come from a folder the spec does not name (robustbench's --model-dir layout, a factory
    that reads its own file) is keyed by the state dict it loaded."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "weights").mkdir()
    (tmp_path / "h2_factory.py").write_text(
        "import torch\nfrom robustlab.models import build_model\n\n"
        "def net():\n    model = build_model('cnn')\n"
        "    model.load_state_dict(torch.load('weights/net.pt', weights_only=True))\n    return model\n"
    )
    torch.save(load_model("zoo:fmnist-cnn").state_dict(), tmp_path / "weights" / "net.pt")
    run_evaluation(ModelSource("h2_factory:net"), FMNIST, CONFIG, tmp_path / "ev")
    torch.save(load_model("zoo:fmnist-cnn-pgdat").state_dict(), tmp_path / "weights" / "net.pt")
    with pytest.raises(RobustlabError, match="model_state_sha256"):
        run_evaluation(ModelSource("h2_factory:net"), FMNIST, CONFIG, tmp_path / "ev", resume=True)
    sys.modules.pop("h2_factory", None)


def _image_folder(root, shade: int = 30) -> str:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.new("L", (28, 28), (40 * i + shade) % 256).save(root / c / f"{i}.png")
    return f"imagefolder:{root}"


def test_resume_refuses_images_changed_in_an_image_folder(tmp_path):
    folder = _image_folder(tmp_path / "imgs")
    data = DataSource(folder, channels=1, image_size=28)
    net = build_model("cnn", num_classes=2)
    config = EvalConfig(eps=0.1, attacks="fgsm", sanity_n=0, plots=False, batch_size=8)
    run_evaluation(net, data, config, tmp_path / "ev")
    Image.new("L", (28, 28), 255).save(tmp_path / "imgs" / "b" / "2.png")  # one image repainted, same name
    with pytest.raises(RobustlabError, match="data_sha256"):
        run_evaluation(net, data, config, tmp_path / "ev", resume=True)


def test_the_data_digest_covers_the_items_used_and_only_those():
    full = resolve_data(DataSource("fashion-mnist", n=100))[3]["data_sha256"]
    assert resolve_data(DataSource("fashion-mnist", n=100))[3]["data_sha256"] == full  # deterministic
    assert resolve_data(DataSource("fashion-mnist", n=99))[3]["data_sha256"] != full
    x, y = torch.rand(70, 1, 28, 28), torch.randint(0, 10, (70,))
    changed = x.clone()
    changed[69, 0, 0, 0] += 0.5  # beyond the first 64 items, which the old digest stopped at
    assert data_digest((x, y)) != data_digest((changed, y))


def test_a_resumed_run_with_the_same_model_and_data_is_bit_for_bit_the_same(tmp_path):
    first = run_evaluation("zoo:fmnist-cnn", FMNIST, CONFIG, tmp_path / "ev")
    again = run_evaluation("zoo:fmnist-cnn", FMNIST, CONFIG, tmp_path / "ev", resume=True)
    figures = [[(e.clean_accuracy, e.robust_accuracy, e.attacks["fgsm"].topk.asr) for e in r.results]
               for r in (first, again)]  # fmt: skip
    assert figures[0] == figures[1]
    _, _, key = resolve_model(ModelSource("zoo:fmnist-cnn"), "cpu")
    assert key["model_state_sha256"] == state_dict_digest(load_model("zoo:fmnist-cnn").state_dict())


# --- item 6 and issue 25 item 4: a model made for other data is refused, naming the fix ----------------------

EVAL = ["eval", "--n", "8", "--eps", "0.1", "--attacks", "fgsm", "--sanity-n", "0", "--no-plots", "--no-progress"]


def test_a_model_file_made_for_another_dataset_is_refused_before_any_attack(tmp_path, cli_error):
    save_model(tmp_path / "model.pt", load_model("zoo:fmnist-cnn"), "cnn", dataset="mnist")  # its header: mnist
    line = cli_error([*EVAL, "--model", tmp_path / "model.pt", "--dataset", "fashion-mnist", "--out", tmp_path / "ev"],
                     "made for mnist", "fashion-mnist", "header")  # fmt: skip
    assert "choose a model made for fashion-mnist" in line
    assert not (tmp_path / "ev").exists()  # refused before the run folder, let alone an attack


@pytest.mark.skipif(importlib.util.find_spec("robustbench") is None, reason="robustbench is not installed")
def test_a_robustbench_cifar10_entry_on_fashion_mnist_is_refused(tmp_path, cli_error):
    from robustlab.models import hub

    model_dicts, benchmark_dataset, threat_model, _ = hub._robustbench_zoo()
    net = model_dicts[benchmark_dataset("cifar10")][threat_model("Linf")]["Ding2020MMA"]["model"]()
    (tmp_path / "cifar10" / "Linf").mkdir(parents=True)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "cifar10" / "Linf" / "Ding2020MMA.pt")
    cli_error([*EVAL, "--model", "robustbench:cifar10/Linf/Ding2020MMA", "--model-dir", tmp_path,
               "--dataset", "fashion-mnist"], "made for cifar10", "RobustBench entry", "fashion-mnist")  # fmt: skip


def test_a_3_channel_model_on_1_channel_data_is_refused(cli_error):
    """torchvision's ResNet takes RGB; its ImageNet normalisation used to broadcast grey images into 3 channels."""
    line = cli_error([*EVAL, "--model", "torchvision:resnet18", "--num-classes", "10", "--dataset", "fashion-mnist"],
                     "3-channel", "1x28x28", "does not fit")  # fmt: skip
    assert "choose a model built for fashion-mnist" in line
    net = load_model("torchvision:resnet18", num_classes=10)
    with pytest.raises(RobustlabError, match="3-channel"):
        run_evaluation(net, FMNIST, CONFIG)  # the Python API probes the same way


def test_channel_and_size_mismatches_on_an_image_folder_name_the_flags(tmp_path, cli_error):
    folder = _image_folder(tmp_path / "imgs")
    common = [*EVAL, "--dataset", folder, "--n", "4"]
    cli_error([*common, "--model", "zoo:fmnist-cnn"], "1x28x28", "--channels 1 --image-size 28")  # RGB 224 default
    cli_error([*common, "--model", "zoo:fmnist-cnn", "--channels", "1", "--image-size", "32"], "--image-size 28")
    cli_error([*common, "--model", "torchvision:resnet18", "--num-classes", "2", "--channels", "1",
               "--image-size", "28"], "3-channel", "--channels 3")  # fmt: skip


def test_a_model_robustlab_knows_nothing_about_names_its_first_convolution(tmp_path, cli_error, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "h2_grey.py").write_text(
        "from robustlab.models import build_model\n\ndef net():\n    return build_model('cnn', num_classes=2).model\n"
    )
    folder = _image_folder(tmp_path / "imgs")
    cli_error([*EVAL, "--model", "h2_grey:net", "--dataset", folder, "--n", "4", "--image-size", "28"],
              "1-channel", "--channels C")  # fmt: skip
    sys.modules.pop("h2_grey", None)


def test_chance_level_clean_accuracy_is_flagged_in_the_report_and_on_the_terminal(tmp_path, capsys, caplog):
    from robustlab.cli import main

    argv = [*EVAL, "--model", "cnn", "--dataset", "fashion-mnist", "--n", "64", "--out", tmp_path / "ev"]
    assert main([str(a) for a in argv]) == 0
    assert "FLAG clean_accuracy_at_chance" in capsys.readouterr().out
    assert "untrained architecture" in caplog.text  # random weights: warned before the run too
    report = run_evaluation("zoo:fmnist-cnn", DataSource("fashion-mnist", n=64), CONFIG)
    assert "clean_accuracy_at_chance" not in report.sanity_fired  # a trained model is not flagged
    import json

    saved = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert "clean_accuracy_at_chance" in saved["sanity_fired"]


# --- unclear messages ---------------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
def test_a_model_trained_from_a_timm_spec_reloads_from_its_run_folder(tmp_path):
    """The model file records arch 'timm:NAME'; it used to be imported as a module ("cannot import 'timm:...'")."""
    import timm

    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save(timm.create_model("resnet10t", pretrained=False, num_classes=10).state_dict(), tmp_path / "w.pt")
    net = load_model("timm:resnet10t", tmp_path / "w.pt")
    (tmp_path / "run").mkdir()
    save_model(tmp_path / "run" / "model.pt", net, "timm:resnet10t", input_shape=(3, 32, 32))
    again = load_model(str(tmp_path / "run"))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(again(x), net(x))


def test_a_truncated_model_file_is_called_truncated_not_torchscript(tmp_path, cli_error):
    (tmp_path / "run").mkdir()
    _model_file(tmp_path / "run" / "model.pt", "zoo:fmnist-cnn")
    whole = (tmp_path / "run" / "model.pt").read_bytes()
    (tmp_path / "run" / "model.pt").write_bytes(whole[: len(whole) // 2])  # a kill in the middle of a copy
    line = cli_error([*EVAL, "--model", tmp_path / "run", "--dataset", "fashion-mnist"], "truncated or corrupt",
                     "save it again, or re-train")  # fmt: skip
    assert "TorchScript" not in line


def test_attacking_a_bare_architecture_warns_that_its_weights_are_random(tmp_path, caplog, capsys):
    from robustlab.cli import main

    argv = ["attack", "--model", "cnn", "--dataset", "fashion-mnist", "--n", "4", "--eps", "0.1", "--attacks", "fgsm",
            "--no-progress", "--out", tmp_path / "a"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    assert "cnn is an untrained architecture: its weights are random" in caplog.text and "cnn@FILE" in caplog.text
    caplog.clear()
    assert main([str(a) for a in [*argv[:-1], tmp_path / "b", "--model", "zoo:fmnist-cnn"]]) == 0
    assert "untrained" not in caplog.text


def test_resume_refuses_a_surrogate_changed_under_the_same_name(tmp_path):
    config = EvalConfig(eps=0.1, attacks="fgsm", sanity_n=0, plots=False, surrogate=load_model("zoo:fmnist-mlp"))
    run_evaluation("zoo:fmnist-cnn", FMNIST, config, tmp_path / "ev")
    other = EvalConfig(eps=0.1, attacks="fgsm", sanity_n=0, plots=False, surrogate=load_model("zoo:fmnist-cnn-pgdat"))
    with pytest.raises(RobustlabError, match="surrogate_state_sha256"):  # both are 'Normalize' by name
        run_evaluation("zoo:fmnist-cnn", FMNIST, other, tmp_path / "ev", resume=True)


@pytest.mark.skipif(importlib.util.find_spec("robustbench") is None, reason="robustbench is not installed")
def test_resume_refuses_robustbench_weights_changed_under_model_dir(tmp_path):
    from robustlab.models import hub

    model_dicts, benchmark_dataset, threat_model, _ = hub._robustbench_zoo()
    (tmp_path / "cifar10" / "Linf").mkdir(parents=True)

    def save_weights(seed: int) -> None:  # robustbench's layout: DIR/cifar10/Linf/NAME.pt
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = model_dicts[benchmark_dataset("cifar10")][threat_model("Linf")]["Ding2020MMA"]["model"]()
        torch.save({"state_dict": net.state_dict()}, tmp_path / "cifar10" / "Linf" / "Ding2020MMA.pt")

    source = ModelSource("robustbench:cifar10/Linf/Ding2020MMA", str(tmp_path))  # --model-dir tmp_path
    data = (torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(4))
    save_weights(0)
    run_evaluation(source, data, CONFIG, tmp_path / "ev")
    save_weights(1)  # new weights, same spec and folder
    with pytest.raises(RobustlabError, match="model_state_sha256"):
        run_evaluation(source, data, CONFIG, tmp_path / "ev", resume=True)


def test_a_model_source_says_what_the_command_line_would_about_its_model_and_an_image_folder(tmp_path):
    """ModelSource and DataSource check and shape what ``robustlab attack/eval`` give them, for Python users too:
    mean and std go together, an SSL encoder's untrained head is named, an image folder takes a model file's shape."""
    with pytest.raises(RobustlabError, match="--mean and --std together"):
        ModelSource("zoo:fmnist-cnn", mean=(0.5,))
    with pytest.raises(RobustlabError, match="one value per channel"):
        ModelSource("zoo:fmnist-cnn", mean=(0.5,), std=(0.2, 0.2))
    save_model(tmp_path / "enc.pt", build_model("cnn"), "cnn", dataset="fashion-mnist", stage="ssl")
    warning = ModelSource(str(tmp_path / "enc.pt")).head_warning()
    assert "ssl encoder" in warning and "never saw a label" in warning and "robustlab finetune --encoder" in warning
    assert ModelSource("zoo:fmnist-cnn").head_warning() is None
    save_model(tmp_path / "rgb.pt", build_model("cnn", input_shape=(3, 40, 40)), "cnn", input_shape=(3, 40, 40))
    folder = DataSource("imagefolder:imgs")
    assert folder.shaped_for(str(tmp_path / "rgb.pt")) == DataSource("imagefolder:imgs", image_size=40, channels=3)
    given = DataSource("imagefolder:imgs", image_size=32)  # a size of its own wins: nothing taken from the file
    assert given.shaped_for(str(tmp_path / "rgb.pt")) == given and folder.shaped_for(None) == folder
    assert DataSource("fashion-mnist").shaped_for(str(tmp_path / "rgb.pt")) == DataSource("fashion-mnist")
