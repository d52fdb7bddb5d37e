"""SSL teacher: contrastive losses (SimCLR / SimCo), DDP negative gathering, augmentations, encoder, kNN monitor."""

from __future__ import annotations

import copy
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import Subset

from robustlab.models import build_model, load_model
from robustlab.ssl import (
    Augment,
    Encoder,
    KNNMonitor,
    SimCLR,
    SimCo,
    SSLModel,
    info_nce,
    knn_accuracy,
    make_ssl_method,
    save_classifier,
    simco_loss,
)
from robustlab.training import TrainConfig, train


@pytest.fixture
def zoo_cnn(zoo_cnn):
    """A private copy: teachers and encoders freeze the parameters of the model they wrap."""
    return copy.deepcopy(zoo_cnn)


def reference_info_nce(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """NT-Xent written out sample by sample: -log exp(s_ip / t) / sum_{j != i} exp(s_ij / t)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n, b = z.shape[0], z1.shape[0]
    losses = []
    for i in range(n):
        sims = torch.stack([z[i] @ z[j] / t for j in range(n) if j != i])
        positive = z[i] @ z[(i + b) % n] / t
        losses.append(-(positive - torch.logsumexp(sims, dim=0)))
    return torch.stack(losses).mean()


def test_info_nce_matches_the_written_out_formula():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert torch.allclose(info_nce(z1, z2, 0.5), reference_info_nce(z1, z2, 0.5), atol=1e-5)
    # perfectly aligned, well separated views have a lower loss than random ones
    assert info_nce(z1, z1, 0.1) < info_nce(z1, z2, 0.1)


def test_simco_reduces_to_info_nce_when_the_two_temperatures_are_equal():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(8, 16, generator=g, requires_grad=True)
    z2 = torch.randn(8, 16, generator=g, requires_grad=True)
    for tau in (0.1, 0.5):
        simco = simco_loss(z1, z2, tau_alpha=tau, tau_beta=tau)
        nce = info_nce(z1, z2, tau)
        assert torch.allclose(simco, nce, atol=1e-6)
        g_simco = torch.autograd.grad(simco, (z1, z2))
        g_nce = torch.autograd.grad(nce, (z1, z2))
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_simco, g_nce))
    # with different temperatures the stop-gradient weight (1 - P^beta) / (1 - P^alpha) changes the loss
    dual = simco_loss(z1, z2, tau_alpha=0.1, tau_beta=1.0)
    assert not torch.allclose(dual, info_nce(z1, z2, 0.1))
    z = F.normalize(torch.cat([z1, z2]), dim=1).detach()
    sim = (z @ z.T).fill_diagonal_(float("-inf"))
    pos = (torch.arange(16) + 8) % 16
    p_a = F.softmax(sim / 0.1, 1)[torch.arange(16), pos]
    p_b = F.softmax(sim / 1.0, 1)[torch.arange(16), pos]
    assert math.isclose(dual.item(), ((1 - p_b) / (1 - p_a) * -p_a.log()).mean().item(), rel_tol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_losses(rank: int, world: int, port: int, z1: torch.Tensor, z2: torch.Tensor, out: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = z1.shape[0] // world
        mine1 = z1[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        mine2 = z2[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        nce = info_nce(mine1, mine2, 0.2)
        nce.backward()
        simco = simco_loss(mine1.detach(), mine2.detach(), 0.1, 1.0)
        out[rank] = (nce.item(), simco.item(), mine1.grad.clone(), mine2.grad.clone())
    finally:
        dist.destroy_process_group()


def test_two_ranks_gather_negatives_same_loss_as_one_rank_with_the_doubled_batch():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_rank_losses, args=(2, _free_port(), z1, z2, out), nprocs=2, start_method="spawn")
        results = dict(out)
    a1, a2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    full = info_nce(a1, a2, 0.2)
    full.backward()
    # every rank's rows see all 2 x 2B views as negatives: the mean of the ranks' losses is the big batch's loss
    assert math.isclose((results[0][0] + results[1][0]) / 2, full.item(), rel_tol=1e-5)
    assert math.isclose((results[0][1] + results[1][1]) / 2, simco_loss(z1, z2, 0.1, 1.0).item(), rel_tol=1e-5)
    # gradients flow back through the gather: DDP's average over ranks gives the big batch's gradient
    grad1 = torch.cat([results[0][2], results[1][2]]) / 2
    grad2 = torch.cat([results[0][3], results[1][3]]) / 2
    assert torch.allclose(grad1, a1.grad, atol=1e-6) and torch.allclose(grad2, a2.grad, atol=1e-6)
    # without gathering, each rank would only contrast against its own half: a different (smaller) loss
    local = (info_nce(z1[:4], z2[:4], 0.2) + info_nce(z1[4:], z2[4:], 0.2)) / 2
    assert not math.isclose(local.item(), full.item(), rel_tol=1e-3)


def test_augmentations_are_seeded_batched_and_stay_in_pixel_range(fmnist_batch):
    x, _ = fmnist_batch(16)
    strong = Augment("strong")
    a = strong(x, torch.Generator().manual_seed(0))
    b = strong(x, torch.Generator().manual_seed(0))
    c = strong(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    weak = Augment("weak")(x, torch.Generator().manual_seed(0))
    # weak views stay closer to the image than strong ones, and neither is the identity
    assert 0 < (weak - x).abs().mean() < (a - x).abs().mean()
    assert torch.equal(Augment("none")(x, torch.Generator()), x)


def test_encoder_is_the_classifiers_penultimate_feature(zoo_cnn, fmnist_batch):
    x, _ = fmnist_batch(8)
    encoder = Encoder(zoo_cnn)
    with torch.no_grad():
        feats = encoder(x)
        assert feats.shape == (8, 128) and encoder.feature_dim == 128
        assert torch.allclose(zoo_cnn.model.fc(feats), zoo_cnn(x), atol=1e-5)

    class Headed(torch.nn.Module):  # no forward_features (like torchvision's ResNets): the input of .fc
        def __init__(self) -> None:
            super().__init__()
            self.body, self.fc = (
                torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32)),
                torch.nn.Linear(32, 10),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.body(x).relu())

    net = Headed()
    with torch.no_grad():
        assert torch.allclose(Encoder(net)(x), net.body(x).relu())


def test_knn_monitor_measures_feature_quality(fmnist_test):
    train_xy = (fmnist_test.images[:1000].float() / 255, fmnist_test.labels[:1000])
    test_xy = (fmnist_test.images[1000:1300].float() / 255, fmnist_test.labels[1000:1300])
    pixels = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Identity())
    pixels.dummy = torch.nn.Parameter(torch.zeros(1))  # embed() reads the device from a parameter
    acc = knn_accuracy(pixels, train_xy, test_xy, k=10)
    assert 0.65 < acc < 0.95  # kNN on raw pixels: well above chance (0.1)
    shuffled = (train_xy[0], train_xy[1][torch.randperm(1000, generator=torch.Generator().manual_seed(0))])
    assert knn_accuracy(pixels, shuffled, test_xy, k=10) < 0.3


def test_simclr_trains_through_the_loop_and_saves_a_loadable_classifier(fmnist_test, tmp_path):
    torch.manual_seed(0)
    net = build_model("cnn", "fashion-mnist")
    model = SSLModel(net, hidden_dim=64, out_dim=32)
    head_before = net.model.fc.weight.clone()
    monitor = KNNMonitor(
        (fmnist_test.images[:300].float() / 255, fmnist_test.labels[:300]),
        (fmnist_test.images[300:400].float() / 255, fmnist_test.labels[300:400]),
    )
    config = TrainConfig(epochs=2, batch_size=64, lr=0.1, lr_schedule="constant", max_steps_per_epoch=3)
    result = train(model, SimCLR(0.2), Subset(fmnist_test, range(512)), config, tmp_path, callbacks=[monitor])
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(0 <= h["knn_accuracy"] <= 1 and math.isfinite(h["loss"]) for h in result.history)
    assert torch.equal(net.model.fc.weight, head_before)  # the head is not part of the encoder
    save_classifier(tmp_path / "model.pt", net, "cnn", "fashion-mnist", method="simclr")
    loaded = load_model(str(tmp_path))
    x = fmnist_test.images[:4].float() / 255
    with torch.no_grad():
        assert torch.allclose(loaded(x), net.eval()(x), atol=1e-6)


def test_simco_method_and_resume_state_round_trip(fmnist_batch):
    x, y = fmnist_batch(32)
    model = SSLModel(build_model("cnn", "fashion-mnist"), hidden_dim=32, out_dim=16)
    method = SimCo(temperature=0.1, tau_beta=1.0, seed=3)
    loss, stats = method.training_loss(model, x, y)
    assert loss.ndim == 0 and loss.requires_grad and "positive_cos" in stats
    state = method.state_dict()
    again = SimCo(temperature=0.1, tau_beta=1.0, seed=3)
    again.load_state_dict(state)
    # the restored generator draws the same next views as the original one
    assert all(torch.equal(a, b) for a, b in zip(method.views(x), again.views(x)))
    with pytest.raises(ValueError, match="simclr, simco"):
        make_ssl_method("byol")
