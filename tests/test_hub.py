"""Models of other zoos: ``robustbench:NAME`` from robustbench's checkpoint layout and ``timm:NAME`` with a local
checkpoint, loaded by the one loader and attacked like any other model; no download ever."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from robustlab.cli import main
from robustlab.errors import RobustlabError
from robustlab.eval import AttackConfig, run_attack
from robustlab.eval.sources import ModelSource
from robustlab.models import Normalize, hub, load_model

pytestmark = pytest.mark.usefixtures("one_thread")
ENTRY = "cifar10/Linf/Ding2020MMA"  # a WideResNet-28-4 (5.8M parameters): builds on the CPU in a blink
needs_robustbench = pytest.mark.skipif(  # (robustbench 1.1's own __init__ fails to import: find_spec, not import)
    importlib.util.find_spec("robustbench") is None,
    reason="robustbench is not installed: pip install 'robustlab[robustbench]'",
)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def robustbench_dir(tmp_path_factory):
    """A RobustBench entry with seeded weights, saved where robustbench keeps it: DIR/cifar10/Linf/NAME.pt (a
    ``state_dict`` with DataParallel's ``module.`` prefixes, as many leaderboard files are)."""
    if importlib.util.find_spec("robustbench") is None:
        pytest.skip("robustbench is not installed: pip install 'robustlab[robustbench]'")
    model_dicts, benchmark_dataset, threat_model, _ = hub._robustbench_zoo()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = model_dicts[benchmark_dataset("cifar10")][threat_model("Linf")]["Ding2020MMA"]["model"]().eval()
    root = tmp_path_factory.mktemp("models")
    (root / "cifar10" / "Linf").mkdir(parents=True)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state}, root / "cifar10" / "Linf" / "Ding2020MMA.pt")
    return root, net


def test_a_robustbench_entry_loads_from_its_layout_and_is_attacked(robustbench_dir):
    root, net = robustbench_dir
    model = load_model(f"robustbench:{ENTRY}", str(root))
    x = _images(8)
    with torch.no_grad():
        expected = net(x)
        assert torch.allclose(model(x), expected, atol=1e-5)  # the saved weights, robustbench's own architecture
    y = expected.argmax(1)  # labels the model gets right, so the attack has something to break
    config = AttackConfig("pgd", 8 / 255, steps=3, batch_size=8)  # a bare eps: Linf
    report = run_attack(ModelSource(f"robustbench:{ENTRY}", str(root)), (x, y), config)
    assert report.n == 8 and report.clean_accuracy == 1.0
    assert 0 <= report.robust_accuracy <= report.clean_accuracy and report.attack["steps"] == 3
    assert not model.training


def test_robustbench_names_resolve_and_wrong_ones_are_one_line(robustbench_dir):
    assert hub.robustbench_entry(ENTRY) == ("cifar10", "Linf", "Ding2020MMA")
    assert hub.robustbench_entry("cifar10/linf/Ding2020MMA") == ("cifar10", "Linf", "Ding2020MMA")
    with pytest.raises(RobustlabError, match="on 2 leaderboards; name one: robustbench:cifar10/Linf/Ding2020MMA"):
        load_model("robustbench:Ding2020MMA")
    with pytest.raises(RobustlabError, match="did you mean Ding2020MMA"):
        load_model("robustbench:cifar10/Linf/Ding2020MMX")
    with pytest.raises(RobustlabError, match="no leaderboard cifar11/Linf"):
        load_model("robustbench:cifar11/Linf/Ding2020MMA")


@needs_robustbench
def test_absent_weights_name_the_file_expected_and_never_download(tmp_path, monkeypatch):
    _, _, _, utils = hub._robustbench_zoo()
    monkeypatch.setattr(utils, "download_gdrive_new", lambda *a, **k: pytest.fail("robustlab tried to download"))
    expected = tmp_path / "cifar10" / "Linf" / "Ding2020MMA.pt"
    with pytest.raises(RobustlabError, match=f"weights {expected} not found") as info:
        load_model(f"robustbench:{ENTRY}", str(tmp_path))
    assert "--model-dir" in str(info.value) and "\n" not in str(info.value)
    # a fresh process, as a user runs it: the one error line, no warnings of robustbench's dependencies
    args = ["attack", "--model", f"robustbench:{ENTRY}", "--model-dir", tmp_path, "--dataset", "fashion-mnist"]
    args += ["--n", "4", "--attacks", "pgd", "--eps", "0.1", "--out", tmp_path / "run"]
    code = "import sys; from robustlab.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [f"robustlab attack: error: {info.value}"], (
        done.stderr
    )


def test_a_missing_package_is_one_line_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("robustbench", "timm") else real(name, *a)
    )
    with pytest.raises(RobustlabError, match=r"pip install 'robustlab\[robustbench\]'"):
        hub.load_robustbench("cifar10/Linf/Standard")
    with pytest.raises(RobustlabError, match=r"pip install 'robustlab\[timm\]'"):
        load_model("timm:resnet10t")


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory):
    """A tiny timm network (resnet10t) with 10 classes and seeded weights, saved as a plain state dict."""
    timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'robustlab[timm]')")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()
    path = tmp_path_factory.mktemp("timm") / "resnet10t.pt"
    torch.save(net.state_dict(), path)
    return path, net


def test_a_timm_model_takes_its_local_checkpoint_and_timms_normalisation(timm_checkpoint):
    path, net = timm_checkpoint
    model = load_model("timm:resnet10t", str(path))  # 10 classes read from the checkpoint's head
    assert isinstance(model, Normalize)
    assert model.mean.flatten().tolist() == pytest.approx(list(net.pretrained_cfg["mean"]))
    x = _images(4)
    with torch.no_grad():
        assert torch.allclose(model(x), net((x - model.mean) / model.std), atol=1e-5)
    assert load_model("timm:resnet10t", str(path), num_classes=10)(x).shape == (4, 10)
    with pytest.raises(RobustlabError, match="does not fit the model"):
        load_model("timm:resnet10t", str(path), num_classes=5)


def test_robustlab_attack_runs_a_timm_model(timm_checkpoint, tmp_path, capsys):
    path, _ = timm_checkpoint
    for c, image in enumerate(_images(10, seed=1)):  # a small imagefolder: one generated image per class
        (tmp_path / "images" / f"class{c}").mkdir(parents=True)
        pixels = (image.permute(1, 2, 0) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / "images" / f"class{c}" / "0.png")
    folder = f"imagefolder:{tmp_path / 'images'}"
    args = ["attack", "--model", "timm:resnet10t", "--checkpoint", path, "--dataset", folder]
    args += ["--attacks", "pgd", "--steps", "2", "--eps", "4/255", "--out", tmp_path / "run", "--no-progress"]
    assert main([str(a) for a in args]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["n"] == 10 and 0 <= report["robust_accuracy"] <= report["clean_accuracy"] <= 1
    assert "robust accuracy" in capsys.readouterr().out
