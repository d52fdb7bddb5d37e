"""Model specs, checkpoints (weights_only by default) and datasets."""

import logging
from pathlib import Path

import pytest
import torch

from robustlab import CheckpointError, RobustlabError
from robustlab.data import dataset_info, first_n, load_dataset
from robustlab.models import Normalize, build_model, load_model, zoo_index


def test_zoo_models_load_and_match_their_recorded_accuracy(fmnist_batch):
    x, y = fmnist_batch(1000)
    for name, meta in zoo_index().items():
        if meta["dataset"] != "fashion-mnist" or "test_accuracy" not in meta:
            continue
        model = load_model(f"zoo:{name}")
        assert not model.training
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        assert abs(acc - meta["test_accuracy"]) < 0.05, name  # first 1000 test images vs the full split


def test_zoo_checkpoints_are_small():
    for meta in zoo_index().values():
        path = Path(__file__).parents[1] / "robustlab" / "models" / "zoo" / meta["checkpoint"]
        assert path.stat().st_size < 3_000_000, path


def test_factory_spec_with_checkpoint_roundtrip(tmp_path, fmnist_batch):
    model = load_model("fixture_models:linear_fmnist")
    ckpt = tmp_path / "linear.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    again = load_model("fixture_models:linear_fmnist", checkpoint=ckpt)
    x, _ = fmnist_batch(4)
    assert torch.equal(model(x), again(x))


def test_torchscript_file(tmp_path, zoo_cnn, fmnist_batch):
    path = tmp_path / "cnn.ts"
    torch.jit.script(zoo_cnn).save(str(path))
    x, _ = fmnist_batch(8)
    assert torch.allclose(load_model(str(path))(x), zoo_cnn(x), atol=1e-5)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("fixture_models:linear_fmnist", checkpoint=tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model("fixture_models:linear_fmnist", checkpoint=corrupt)
    wrong = tmp_path / "wrong.pt"
    torch.save(build_model("mlp").state_dict(), wrong)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model("fixture_models:linear_fmnist", checkpoint=wrong)


def test_pickled_objects_need_explicit_trust(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": load_model("fixture_models:linear_fmnist").state_dict(), "extra": Path("x")}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_model("fixture_models:linear_fmnist", checkpoint=path)
    assert load_model("fixture_models:linear_fmnist", checkpoint=path, trust_checkpoint=True) is not None


def test_torchvision_spec_without_weights_warns(caplog):
    with caplog.at_level(logging.WARNING):
        model = load_model("torchvision:resnet18", num_classes=10)
    assert isinstance(model, Normalize) and "random weights" in caplog.text
    with pytest.raises(RobustlabError, match="no model"):
        load_model("torchvision:not_a_net")


def test_bad_specs_are_named():
    with pytest.raises(RobustlabError, match="unknown zoo model"):
        load_model("zoo:nope")
    with pytest.raises(RobustlabError, match="cannot import"):
        load_model("no_such_module:factory")
    with pytest.raises(RobustlabError, match="cannot read model spec"):
        load_model("resnet")


def test_fashion_mnist_is_found_offline_and_in_range(tmp_path):
    test = load_dataset("fashion-mnist", "test")
    assert len(test) == 10_000 and len(load_dataset("fmnist", "train")) == 60_000
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.min() >= 0 and x.max() <= 1 and 0 <= y < 10
    # --data-root in torchvision's layout is searched first
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in Path("/usr/share/datasets/fashion-mnist").glob("t10k-*"):
        (raw / f.name).symlink_to(f)
    assert torch.equal(load_dataset("fashion-mnist", "test", root=str(tmp_path)).images, test.images)


def test_dataset_errors(tmp_path):
    with pytest.raises(RobustlabError, match="unknown dataset"):
        load_dataset("imagenet21k")
    with pytest.raises(RobustlabError, match="unknown split"):
        load_dataset("fashion-mnist", "val")
    with pytest.raises(RobustlabError, match="out of range"):
        first_n(load_dataset("fashion-mnist", "test"), 10_001)
    with pytest.raises(RobustlabError, match="imagefolder"):
        load_dataset(f"imagefolder:{tmp_path / 'none'}")
    assert dataset_info("cifar10")["channels"] == 3
