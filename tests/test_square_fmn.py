"""Native Square (black-box random search) and FMN (minimum-norm) attacks: the ball, the query budget, the reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.attacks import attack_from_spec
from robustlab.attacks.square import Square, p_schedule, square_side
from robustlab.models import load_model
from robustlab.threat import ThreatModel

pytestmark = pytest.mark.usefixtures("one_thread")

THREATS = [ThreatModel("linf", 0.1), ThreatModel("l2", 2.0)]


class CountingModel(nn.Module):
    """Counts the inputs (rows) the wrapped model sees."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.model(x)


@pytest.fixture(scope="module")
def zoo_pgdat():
    return load_model("zoo:fmnist-cnn-pgdat")


def correct_only(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    return x[keep], y[keep]


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
def test_square_stays_in_the_ball_and_the_bounds(zoo_cnn, fmnist_batch, threat):
    x, y = fmnist_batch(40)
    result = Square(n_queries=100)(zoo_cnn, x, y, threat)
    assert result.x_adv.shape == x.shape
    assert float(threat.distance(result.x_adv, x).max()) <= threat.eps * (1 + 1e-5)
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    with torch.no_grad():
        logits = zoo_cnn(result.x_adv)
    assert torch.equal(result.success, logits.argmax(1) != y)  # the reported success is the model's verdict
    assert bool(result.success.any())  # a non-robust model breaks within 100 queries


def test_square_is_as_strong_as_pyautoattack_at_equal_queries(zoo_pgdat, fmnist_batch):
    """200 images of the adversarially trained CNN, 300 queries: native Square's robust accuracy is at most the
    reference's + 2 points (as strong) and within 5 points either way (seeds differ: over seeds 0-2 the reference
    spread 6 points at L2 and native was 0.5-4 points lower)."""
    from pyautoattack.square import SquareAttack

    x, y = fmnist_batch(200)
    x, y = correct_only(zoo_pgdat, x, y)
    for threat in THREATS:
        native = (~Square(n_queries=300)(zoo_pgdat, x, y, threat).success).float().sum().item() / 200
        norm = {"linf": "Linf", "l2": "L2"}[threat.norm]
        reference = SquareAttack(zoo_pgdat, norm=norm, n_queries=300, eps=threat.eps, p_init=0.8, seed=0)
        with torch.no_grad():
            robust = (zoo_pgdat(reference.perturb(x, y)).argmax(1) == y).float().sum().item() / 200
        assert native <= robust + 0.02, (threat.norm, native, robust)
        assert abs(native - robust) <= 0.05, (threat.norm, native, robust)


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
def test_square_queries_a_sample_no_more_once_broken(zoo_cnn, fmnist_batch, threat):
    x, y = fmnist_batch(30)
    x, y = correct_only(zoo_cnn, x, y)
    counting = CountingModel(zoo_cnn)
    result = Square(n_queries=60)(counting, x, y, threat)
    queries = result.info["queries"]
    assert counting.rows == int(queries.sum())  # every model row is one of a sample's counted queries
    assert bool(result.success.any()) and bool((~result.success).any())
    assert bool((queries[result.success] < 60).all())  # a broken sample left before the budget ran out
    assert bool((queries[~result.success] == 60).all())
    # the sample alone spends the same queries: it broke at the same query and was asked nothing after
    i = int(result.success.nonzero()[0])
    counting.rows = 0
    alone = Square(n_queries=60)(counting, x[i : i + 1], y[i : i + 1], threat)
    assert bool(alone.success[0]) and counting.rows == int(alone.info["queries"][0]) == int(queries[i])


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
def test_square_result_of_a_sample_does_not_depend_on_its_batch(zoo_cnn, fmnist_batch, threat):
    x, y = fmnist_batch(24)
    whole = Square(n_queries=50, seed=3)(zoo_cnn, x, y, threat)
    part = Square(n_queries=50, seed=3)(zoo_cnn, x[8:16], y[8:16], threat)
    assert torch.equal(whole.success[8:16], part.success)
    assert torch.allclose(whole.x_adv[8:16], part.x_adv, atol=1e-6)
    other = Square(n_queries=50, seed=4)(zoo_cnn, x[8:16], y[8:16], threat)
    assert not torch.equal(other.x_adv, part.x_adv)  # the seed changes the draws


def test_square_schedule_is_rescaled_to_the_query_budget():
    sides = [square_side(p_schedule(i, 1000, 0.8), 784, 1, 28, minimum=1, odd=False) for i in range(1000)]
    assert sides[0] == 25 and sides[-1] == 1  # 0.8 of the pixels at first, p_init / 512 at the end
    assert sides == sorted(sides, reverse=True)
    assert p_schedule(999, 1000, 0.8) == pytest.approx(0.8 / 512)
    assert p_schedule(999, 10000, 0.8) == pytest.approx(0.8 / 16)  # the unscaled schedule stops at p_init / 16
    assert p_schedule(1, 1000, 0.8) == 0.8 and p_schedule(2, 1000, 0.8) == 0.4  # the first breakpoint, 10 / 10
    l2_sides = {square_side(p_schedule(i, 1000, 0.8), 784, 1, 28, minimum=3, odd=True) for i in range(1000)}
    assert min(l2_sides) == 3 and all(s % 2 for s in l2_sides)


def test_square_targeted_reaches_the_target(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(20)
    target = (y + 1) % 10
    result = Square(n_queries=200)(zoo_cnn, x, y, ThreatModel("linf", 0.15), target=target)
    with torch.no_grad():
        top = zoo_cnn(result.x_adv).argmax(1)
    assert bool(result.success.any())
    assert torch.equal(result.success, top == target)


def test_square_specs_from_the_registry():
    square = attack_from_spec("square(n_queries=1000)", seed=7, steps=10)
    assert isinstance(square, Square) and square.n_queries == 1000 and square.seed == 7
    assert attack_from_spec("square").config()["n_queries"] == 5000
