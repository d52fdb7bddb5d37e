"""Fine-tuning protocols of encoders: SLF (frozen encoder, clean head), ALF (frozen encoder, PGD head), AFF (TRADES)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from robustlab.errors import RobustlabError
from robustlab.ssl import FineTune, classifier_head, prepare_classifier
from robustlab.ssl.trades import kl_to_clean, trades_loss
from robustlab.threat import ThreatModel
from robustlab.training import TrainConfig, train

THREAT = ThreatModel("linf", 0.1)


class BNNet(nn.Module):
    """A tiny encoder with batch norm (its running statistics must not move under SLF) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
        self.fc = nn.Linear(4 * 13 * 13, 10)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def _encoder_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if not k.startswith(("fc.", "model.fc."))}


@pytest.mark.parametrize("protocol", ["slf", "alf"])
def test_linear_protocols_leave_the_encoder_unchanged(protocol, fmnist_test):
    torch.manual_seed(0)
    net = prepare_classifier(BNNet(), protocol, num_classes=10)
    before, head_before = _encoder_state(net), net.fc.weight.clone()
    config = TrainConfig(epochs=1, batch_size=32, lr=0.1, lr_schedule="constant", max_steps_per_epoch=3)
    result = train(net, FineTune(protocol, THREAT, steps=2), Subset(fmnist_test, range(96)), config)
    after = _encoder_state(net)
    assert all(torch.equal(after[k], before[k]) for k in before)  # weights and BN running statistics
    assert not torch.equal(net.fc.weight, head_before)
    assert math.isfinite(result.history[0]["loss"])


def test_slf_head_learns_from_frozen_zoo_features(zoo_cnn, fmnist_test):
    net = prepare_classifier(copy.deepcopy(zoo_cnn), "slf", num_classes=10)
    encoder_before = _encoder_state(net)
    config = TrainConfig(epochs=1, batch_size=64, optimizer="adam", lr=1e-2, lr_schedule="constant")
    train(net, FineTune("slf"), Subset(fmnist_test, range(1024)), config)
    x, y = fmnist_test.images[1024:1524].float() / 255, fmnist_test.labels[1024:1524]
    with torch.no_grad():
        accuracy = (net(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.75  # a fresh head on the zoo CNN's features (the original head: ~92 %)
    assert all(torch.equal(v, encoder_before[k]) for k, v in _encoder_state(net).items())


def test_fresh_head_is_drawn_from_its_seed_and_leaves_the_global_rng_alone(zoo_cnn):
    state = torch.random.get_rng_state()
    a, b, c = (prepare_classifier(copy.deepcopy(zoo_cnn), "slf", 10, seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)  # so an earlier stage cannot change the head
    wa, wb, wc, old = (classifier_head(n).weight for n in (a, b, c, zoo_cnn))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc) and not torch.equal(wa, old)


def test_trades_loss_and_aff_train_every_weight(zoo_cnn, fmnist_batch):
    logits = torch.randn(4, 10)
    assert torch.allclose(kl_to_clean(logits, F.softmax(logits, 1)), torch.zeros(4), atol=1e-6)
    x, y = fmnist_batch(32)
    net = prepare_classifier(copy.deepcopy(zoo_cnn), "aff", num_classes=10)
    loss, stats = trades_loss(net, x, y, THREAT, beta=6.0)
    assert math.isclose(loss.item(), stats["ce"] + 6.0 * stats["kl"], rel_tol=1e-5) and stats["kl"] > 0
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())  # full fine-tuning: the encoder learns too
    with pytest.raises(RobustlabError, match="threat model"):
        FineTune("aff")
    with pytest.raises(RobustlabError, match="slf, alf, aff"):
        prepare_classifier(net, "full", 10)


def test_cli_chain_ssl_deacl_pseudo_at_finetune_then_attack(tmp_path, capsys):
    from robustlab.cli import main

    small = ["--dataset", "fashion-mnist", "--n", "128", "--epochs", "1", "--max-steps-per-epoch", "1",
             "--batch-size", "32", "--no-progress"]  # fmt: skip
    assert main(["ssl", "--model", "cnn", "--knn-n", "0", "--out", str(tmp_path / "ssl"), *small]) == 0
    teacher = ["--teacher", str(tmp_path / "ssl")]
    deacl = ["--eps", "0.1", "--steps", "1", "--init", "random", "--center", "--augment", "none"]
    assert main(["deacl", *teacher, *deacl, "--out", str(tmp_path / "deacl"), *small]) == 0
    pseudo = ["--pseudo-targets", "kmeans", "--clusters", "3", "--kmeans-n", "64", "--eps", "0.1", "--steps", "1",
              "--init", "random", "--augment", "none"]  # fmt: skip
    assert main(["pseudo-at", *teacher, *pseudo, "--out", str(tmp_path / "pseudo"), *small]) == 0
    assert (tmp_path / "pseudo" / "model.pt").is_file() and (tmp_path / "pseudo" / "report.json").is_file()
    pseudo_report = json.loads((tmp_path / "pseudo" / "report.json").read_text())
    assert pseudo_report["method"]["init"] == "random" and pseudo_report["method"]["clusters"] == 3
    encoder = ["--encoder", str(tmp_path / "deacl"), "--eps", "0.1", "--eval-n", "20", "--eval-steps", "2"]
    assert main(["finetune", *encoder, "--protocol", "slf", "--out", str(tmp_path / "slf"), *small]) == 0
    assert "clean accuracy" in capsys.readouterr().out
    # the fine-tuned classifier is a plain robustlab model file: robustlab attack takes it directly
    model = str(tmp_path / "slf" / "model.pt")
    args = ["--dataset", "fashion-mnist", "--n", "20", "--attacks", "fgsm", "--eps", "0.1", "--no-progress"]
    assert main(["attack", "--model", model, *args, "--out", str(tmp_path / "attack")]) == 0
    # user mistakes: one line, exit code 2
    assert main(["finetune", *encoder[:2], "--protocol", "alf", "--out", str(tmp_path / "x"), *small]) == 2
    assert "give --eps" in capsys.readouterr().err
    assert main(["deacl", *teacher, "--out", str(tmp_path / "deacl"), *small]) == 2
    assert "--resume" in capsys.readouterr().err
