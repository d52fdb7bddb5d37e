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
    assert "torchvision:resnet18" in caplog.text and "torchvision:torchvision:" not in caplog.text
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


def test_model_file_round_trip_keeps_architecture_classes_and_normalisation(tmp_path):
    from robustlab.models import MODEL_FORMAT, model_arch, model_file_header, save_model

    net = build_model("cnn", num_classes=7, mean=(0.5,), std=(0.25,))
    header = save_model(tmp_path / "model.pt", net, "cnn", dataset="fashion-mnist", command="robustlab train ...")
    assert header["format"] == MODEL_FORMAT and header["num_classes"] == 7
    assert header["normalization"] == {"mean": [0.5], "std": [0.25]} and header["input_shape"] == [1, 28, 28]
    assert model_file_header(str(tmp_path)) == {**header, "arch_kwargs": {}} and model_arch(str(tmp_path))[0] == "cnn"
    loaded = load_model(str(tmp_path))
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), net.eval()(x)) and loaded.mean.item() == 0.5


def test_older_model_state_files_still_load(tmp_path):
    net = build_model("cnn")
    torch.save({"model_state": net.state_dict(), "arch": "cnn", "dataset": "fashion-mnist", "num_classes": 10},
               tmp_path / "old.pt")  # fmt: skip
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(load_model(str(tmp_path / "old.pt"))(x), net.eval()(x))


def test_torchvision_model_file_rebuilds_with_its_classes_and_normalisation(tmp_path):
    from robustlab.models import save_model

    net = load_model("torchvision:resnet18", num_classes=3, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    save_model(tmp_path / "model.pt", net, "torchvision:resnet18", input_shape=(3, 32, 32))
    loaded = load_model(str(tmp_path / "model.pt"))
    x = torch.rand(2, 3, 32, 32)
    assert loaded(x).shape == (2, 3) and torch.allclose(loaded(x), net(x))
    assert loaded.std.flatten().tolist() == pytest.approx([0.2, 0.2, 0.2])


def test_state_dict_mismatch_names_the_first_key_and_shapes(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(CheckpointError, match=r"'fc.weight' is \(3, 512\) in the checkpoint but \(1000, 512\)"):
        load_model("torchvision:resnet18", checkpoint=tmp_path / "r18.pt")
    fitted = load_model("torchvision:resnet18", tmp_path / "r18.pt", num_classes=3)
    assert fitted(torch.rand(1, 3, 32, 32)).shape == (1, 3)


def test_factory_num_classes_is_passed_or_refused():
    assert load_model("fixture_models:five_classes")(torch.rand(1, 1, 28, 28)).shape[1] == 5
    with pytest.raises(RobustlabError, match="takes no num_classes"):
        load_model("fixture_models:five_classes", num_classes=3)
