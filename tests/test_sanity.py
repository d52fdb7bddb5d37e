"""Each gradient-masking sanity flag fires on a model built to trigger it and stays silent on zoo:fmnist-cnn."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from robustlab.eval.sanity import (
    check_blackbox,
    check_eps_monotone,
    check_eps_zero,
    check_gradients,
    check_more_steps,
    check_randomness,
    check_train_mode,
    run_sanity_checks,
)
from robustlab.eval.sanity_budget import SanityBudget
from robustlab.models.counting import count_passes
from robustlab.threat import ThreatModel

pytestmark = pytest.mark.usefixtures("one_thread")


class _FlipGradient(torch.autograd.Function):
    """Identity forward; the backward negates the gradient of the samples in ``flip``."""

    @staticmethod
    def forward(ctx, x: Tensor, flip: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(flip)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (flip,) = ctx.saved_tensors
        sign = 1.0 - 2.0 * flip.to(grad.dtype).view(-1, *([1] * (grad.dim() - 1)))
        return grad * sign, None


class Rounding(nn.Module):
    """Bit-depth reduction in front of the classifier: a non-differentiable rounding layer (zero gradients)."""

    def __init__(self, net: nn.Module, levels: int = 8) -> None:
        super().__init__()
        self.net, self.levels = net, levels

    def forward(self, x: Tensor) -> Tensor:
        return self.net(torch.round(x * (self.levels - 1)) / (self.levels - 1))


class NoisyLogits(nn.Module):
    """Randomness in the forward pass: Gaussian noise on the logits."""

    def __init__(self, net: nn.Module, sigma: float = 3.0) -> None:
        super().__init__()
        self.net, self.sigma = net, sigma
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.net(x)
        return logits + self.sigma * torch.randn(logits.shape, generator=self.generator)


class QueryLimit(nn.Module):
    """A stateful defence: after ``limit`` gradient queries it feeds attacks the negated gradient."""

    def __init__(self, net: nn.Module, limit: int) -> None:
        super().__init__()
        self.net, self.limit, self.queries = net, limit, 0

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad:
            self.queries += 1
            flip = torch.full((x.shape[0],), self.queries > self.limit)
            x = _FlipGradient.apply(x, flip)
        return self.net(x)


class FarInputsMislead(nn.Module):
    """Negates the gradient of inputs farther than ``radius`` (Linf) from every reference image."""

    def __init__(self, net: nn.Module, references: Tensor, radius: float) -> None:
        super().__init__()
        self.net, self.radius = net, radius
        self.register_buffer("references", references.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        distance = torch.cdist(x.detach().flatten(1), self.references, p=float("inf")).min(dim=1).values
        return self.net(_FlipGradient.apply(x, distance > self.radius))


def test_zoo_model_raises_no_flag(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(40)
    flags = run_sanity_checks(zoo_cnn, x, y, ThreatModel("linf", 0.03), steps=3, queries=60)
    assert [f.name for f in flags if f.fired] == []
    assert len(flags) == 7


def test_rounding_layer_zero_gradients_and_blackbox_beats_whitebox(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(60)
    model = Rounding(zoo_mlp).eval()
    assert check_gradients(model, x, y).fired
    flag = check_blackbox(model, x, y, ThreatModel("linf", 0.1), steps=3, queries=60)
    assert flag.fired, flag.message
    assert flag.values["robust_accuracy"]["square"] < flag.values["robust_accuracy"]["pgd"]


def test_dropout_in_train_mode_is_flagged(zoo_mlp, fmnist_batch):
    x, _ = fmnist_batch(20)
    model = nn.Sequential(nn.Dropout(0.3), zoo_mlp).eval()
    assert not check_train_mode(model).fired
    model[0].train()
    assert check_train_mode(model).fired
    assert check_randomness(model, x).fired


def test_random_forward_and_eps_zero(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(60)
    model = NoisyLogits(zoo_mlp).eval()
    assert check_randomness(model, x).fired
    flag = check_eps_zero(model, x, y, ThreatModel("linf", 0.03), steps=1)
    assert flag.fired, flag.message
    assert not check_eps_zero(zoo_mlp, x, y, ThreatModel("linf", 0.03), steps=1).fired


def test_robust_accuracy_rising_with_steps_is_flagged(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(60)
    model = QueryLimit(zoo_mlp, limit=5).eval()  # PGD-5 sees the true gradient, the later PGD-20 mostly not
    flag = check_more_steps(model, x, y, ThreatModel("linf", 0.05), steps=5, restarts=1)
    assert flag.fired, flag.message


def test_robust_accuracy_rising_with_eps_is_flagged(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(60)
    model = FarInputsMislead(zoo_mlp, x, radius=0.05).eval()
    flag = check_eps_monotone(model, x, y, ThreatModel("linf", 0.03), eps_list=[0.03, 0.1], steps=5)
    assert flag.fired, flag.message
    assert flag.values["robust_accuracy"][1] > flag.values["robust_accuracy"][0]


def test_checks_share_one_pgd_run_and_square_attacks_only_what_it_left_robust(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(40)
    with count_passes(zoo_cnn) as total:
        flags = run_sanity_checks(zoo_cnn, x, y, ThreatModel("linf", 0.03), steps=3, queries=60)
    assert sum(f.forward_passes for f in flags) == total.forward  # every pass is some check's, none twice
    assert sum(f.backward_passes for f in flags) == total.backward
    by_name = {f.name: f for f in flags}
    pgd = by_name["rises_with_steps"].values["robust_accuracy"]["pgd-3"]
    blackbox = by_name["blackbox_beats_whitebox"].values
    assert blackbox["robust_accuracy"]["pgd"] == pgd  # the same PGD run
    assert blackbox["square_attacked"] == round(pgd * len(y))  # Square only on PGD's survivors
    assert by_name["rises_with_eps"].values["robust_accuracy"][1] == pgd


def test_a_budget_sizes_the_expensive_checks_and_keeps_a_minimum(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(60)
    threat = ThreatModel("linf", 0.03)
    tight = run_sanity_checks(zoo_cnn, x, y, threat, steps=3, queries=60, budget=SanityBudget(n=60, per_robust=20))
    loose = run_sanity_checks(zoo_cnn, x, y, threat, steps=3, queries=60, budget=SanityBudget(n=10**6, per_robust=600))
    assert {f.values.get("samples") for f in tight[3:]} == {SanityBudget.minimum}
    assert {f.values.get("samples") for f in loose[3:]} == {60}
    assert sum(f.forward_passes + f.backward_passes for f in tight) < sum(
        f.forward_passes + f.backward_passes for f in loose
    )
