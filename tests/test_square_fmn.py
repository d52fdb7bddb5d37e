"""Native Square (black-box random search) and FMN (minimum-norm) attacks: the ball, the query budget, the reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.attacks import PGD, attack_from_spec
from robustlab.attacks.fmn import FMN, robust_accuracy_curve
from robustlab.attacks.square import Square, p_schedule, square_side
from robustlab.errors import RobustlabError
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


@pytest.mark.slow
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
    queries, candidates = result.info["queries"], result.info["candidates"]
    assert counting.rows == int(queries.sum())  # every model row is one of a sample's counted queries
    assert bool(result.success.any()) and bool((~result.success).any())
    assert bool((candidates[result.success] < 60).all())  # a broken sample left before the budget ran out
    assert bool((candidates[~result.success] == 60).all())
    assert bool((queries <= candidates).all()) and bool((queries >= 1).all())
    # the sample alone spends the same queries: it broke at the same query and was asked nothing after
    i = int(result.success.nonzero()[0])
    counting.rows = 0
    alone = Square(n_queries=60)(counting, x[i : i + 1], y[i : i + 1], threat)
    assert bool(alone.success[0]) and counting.rows == int(alone.info["queries"][0]) == int(queries[i])


def test_square_does_not_ask_the_model_about_a_candidate_equal_to_the_best(zoo_pgdat, fmnist_batch):
    """Late Linf squares of one pixel often set the pixel to the value it has: such a candidate is drawn (it spends
    budget) but not sent to the model, and the result's loss and logits are still the model's on the best."""
    from robustlab.losses import cw_margin

    x, y = correct_only(zoo_pgdat, *fmnist_batch(30))
    counting = CountingModel(zoo_pgdat)
    result = Square(n_queries=200)(counting, x, y, ThreatModel("linf", 0.1))
    queries, candidates = result.info["queries"], result.info["candidates"]
    robust = ~result.success
    assert bool(robust.any()) and bool((candidates[robust] == 200).all())
    assert int(queries[robust].sum()) < 0.9 * int(candidates[robust].sum())  # a tenth or more not asked
    assert counting.rows == int(queries.sum())
    with torch.no_grad():
        logits = zoo_pgdat(result.x_adv)
    assert torch.allclose(result.logits, logits, atol=1e-5)
    assert torch.allclose(result.loss, cw_margin(logits, y), atol=1e-5)


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


def test_square_budget_grows_until_a_block_breaks_nothing(zoo_pgdat, fmnist_batch):
    x, y = correct_only(zoo_pgdat, *fmnist_batch(40))
    threat = ThreatModel("linf", 0.1)
    fixed = Square(n_queries=50, seed=1)(zoo_pgdat, x, y, threat)
    counting = CountingModel(zoo_pgdat)
    grown = Square(n_queries=50, max_queries=1500, seed=1)(counting, x, y, threat)
    blocks = grown.info["blocks"]
    assert blocks[0] == {"queries": 50, "broken": int(fixed.success.sum())}  # the first block is the fixed run
    budgets = [b["queries"] for b in blocks]  # each block twice the one before, the last cut to what is left
    assert all(b == min(2 * a, 1500 - sum(budgets[: i + 1])) for i, (a, b) in enumerate(zip(budgets, budgets[1:])))
    assert sum(b["queries"] for b in blocks) <= 1500 and len(blocks) > 1
    assert blocks[-1]["broken"] == 0 or sum(b["queries"] for b in blocks) == 1500  # stopped for a reason
    assert bool((grown.success | ~fixed.success).all())  # never weaker than the first block alone
    assert int(grown.success.sum()) == sum(b["broken"] for b in blocks)
    assert bool((grown.info["candidates"][~grown.success] == sum(b["queries"] for b in blocks)).all())
    assert counting.rows == int(grown.info["queries"].sum())
    assert Square(n_queries=50).per_sample and not Square(n_queries=50, max_queries=100).per_sample  # batch-wide blocks
    with torch.no_grad():
        assert torch.equal(grown.success, zoo_pgdat(grown.x_adv).argmax(1) != y)
    assert float(threat.distance(grown.x_adv, x).max()) <= 0.1 * (1 + 1e-5)
    with pytest.raises(RobustlabError, match="max_queries"):
        Square(n_queries=100, max_queries=50)


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
    for bad in ("square(n_queries=0)", "square(p_init=1.5)", "square(p_init=0)"):
        with pytest.raises(RobustlabError, match="n_queries|p_init"):
            attack_from_spec(bad)


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
def test_threat_projects_onto_a_per_sample_radius(fmnist_batch, threat):
    x, _ = fmnist_batch(6)
    far = (x + torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    radius = torch.tensor([0.0, 0.05, 0.1, 0.5, 1.0, 3.0])
    projected = threat.project(far, x, radius=radius)
    for i, r in enumerate(radius.tolist()):  # the same as each sample's own threat model
        alone = threat.with_eps(min(r, 1.0) if threat.norm == "linf" else r).project(far[i : i + 1], x[i : i + 1])
        assert torch.allclose(projected[i : i + 1], alone, atol=1e-6)


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
def test_fmn_norms_are_the_distances_of_real_adversarial_examples(zoo_cnn, fmnist_batch, threat):
    x, y = fmnist_batch(40)
    whole_box = threat.with_eps(1.0 if threat.norm == "linf" else 28.0)  # every norm fits: x_adv is the minimal one
    result = FMN(steps=30)(zoo_cnn, x, y, whole_box)
    broken = result.norms.isfinite()
    assert bool(broken.sum() >= 30)
    assert torch.equal(broken, result.success)
    with torch.no_grad():
        assert bool((zoo_cnn(result.x_adv[broken]).argmax(1) != y[broken]).all())
    assert torch.allclose(threat.distance(result.x_adv, x)[broken], result.norms[broken])
    assert bool((result.x_adv[~broken] == x[~broken]).all())
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    # the norms do not depend on the eps the attack was called with
    assert torch.equal(FMN(steps=30)(zoo_cnn, x, y, threat).norms, result.norms)


@pytest.mark.slow
@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.05), ThreatModel("l2", 1.0)], ids=["linf", "l2"])
def test_fmn_is_as_strong_as_pgd50_and_its_curve_is_consistent(zoo_cnn, fmnist_batch, threat):
    """100 images of zoo:fmnist-cnn: FMN-100 at a fixed eps within 3 points of PGD-50 (measured on 200 images:
    Linf 0.05 21.5 vs 23.5 %, L2 1.0 14.0 vs 16.5 %); the curve from its norms never below PGD-50 - 3 points (norms
    that are not too small) and never above clean accuracy, falling with eps."""
    x, y = fmnist_batch(100)
    with torch.no_grad():
        correct = zoo_cnn(x).argmax(1) == y
    fmn = FMN()(zoo_cnn, x, y, threat)
    pgd = PGD(steps=50, early_stop=True)(zoo_cnn, x, y, threat)
    fmn_robust = int((correct & ~fmn.success).sum()) / 100
    pgd_robust = int((correct & ~pgd.success).sum()) / 100
    assert fmn_robust <= pgd_robust + 0.03, (fmn_robust, pgd_robust)
    eps_values = [0.0, threat.eps / 2, threat.eps, 2 * threat.eps]
    curve = robust_accuracy_curve(fmn.norms, correct, eps_values)
    assert curve[0] == int(correct.sum()) / 100
    assert curve == sorted(curve, reverse=True)
    assert pgd_robust - 0.03 <= curve[2] and curve[2] >= fmn_robust  # at eps, the call adds the cut-back examples


def test_fmn_targeted_reaches_the_target(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(20)
    target = (y + 1) % 10
    result = FMN(steps=50)(zoo_cnn, x, y, ThreatModel("l2", 28.0), target=target)
    with torch.no_grad():
        top = zoo_cnn(result.x_adv).argmax(1)
    assert bool(result.success.sum() >= 15)
    assert torch.equal(result.success, top == target) and torch.equal(result.success, result.norms.isfinite())


def test_fmn_norms_of_a_sample_do_not_depend_on_its_batch(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(12)
    threat = ThreatModel("l2", 1.0)
    whole, part = FMN(steps=15)(zoo_cnn, x, y, threat), FMN(steps=15)(zoo_cnn, x[3:7], y[3:7], threat)
    assert FMN.per_sample and torch.allclose(whole.norms[3:7], part.norms, atol=1e-5)


def test_fmn_specs_from_the_registry():
    assert attack_from_spec("fmn(steps=200)", steps=10).steps == 200
    assert attack_from_spec("fmn", steps=10, seed=3).steps == 100  # the CLI's --steps is PGD's, not FMN's


def test_the_autoattack_adapter_rescales_squares_schedule_to_a_given_budget(zoo_cnn):
    from robustlab.attacks import AutoAttack

    threat = ThreatModel("linf", 0.1)
    assert AutoAttack(attacks=["square"], n_queries=1000).build(zoo_cnn, threat, "cpu").square.rescale_schedule
    assert not AutoAttack(attacks=["square"]).build(zoo_cnn, threat, "cpu").square.rescale_schedule  # standard's own
