"""Every accuracy carries an exact 95 % binomial (Clopper-Pearson) interval; per-class counts add up."""

from __future__ import annotations

import math

import pytest
import torch

from robustlab.eval import EvalConfig, run_evaluation
from robustlab.eval.intervals import betainc, clopper_pearson, format_interval
from robustlab.eval.metrics import class_names, per_class

pytestmark = pytest.mark.usefixtures("one_thread")


def _binomial_tail(k: int, n: int, p: float, upper: bool) -> float:
    """P(X >= k) (upper) or P(X <= k) for X ~ Binomial(n, p), summed term by term."""
    terms = range(k, n + 1) if upper else range(0, k + 1)
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in terms)


def test_known_intervals_by_hand():
    # k = 0: the upper bound solves (1 - p)^n = 0.025; k = n: the lower bound solves p^n = 0.025
    low, high = clopper_pearson(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-9) and round(high, 4) == 0.3085
    low, high = clopper_pearson(10, 10)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 10), abs=1e-9)
    assert clopper_pearson(5, 10) == pytest.approx((0.1871, 0.8129), abs=1e-4)  # the textbook values
    assert clopper_pearson(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("k, n", [(1, 7), (61, 100), (305, 500), (3, 1000)])
def test_bounds_invert_the_binomial_tails(k, n):
    low, high = clopper_pearson(k, n)
    assert low < k / n < high
    assert _binomial_tail(k, n, low, upper=True) == pytest.approx(0.025, abs=1e-7)
    assert _binomial_tail(k, n, high, upper=False) == pytest.approx(0.025, abs=1e-7)
    # the regularised incomplete beta is the binomial tail: P(X >= k) = I_p(k, n - k + 1)
    assert betainc(k, n - k + 1, 0.3) == pytest.approx(_binomial_tail(k, n, 0.3, upper=True), abs=1e-9)


def test_format_is_compact():
    assert format_interval(0.61, [0.542, 0.675]) == "61.0 [54.2, 67.5]"


def test_per_class_counts_sum_to_the_totals():
    labels = torch.tensor([0, 1, 1, 2, 2, 2, 9])
    correct = torch.tensor([True, False, True, True, True, False, True])
    robust = torch.tensor([False, False, True, True, False, False, True])
    counts = per_class(labels, correct, robust, 10)
    assert counts["n"] == [1, 2, 3, 0, 0, 0, 0, 0, 0, 1]
    assert counts["clean_correct"] == [1, 1, 2, 0, 0, 0, 0, 0, 0, 1]
    assert sum(counts["robust"]) == int(robust.sum()) and counts["robust"][2] == 1


def test_eval_report_carries_intervals_and_class_figures(zoo_mlp, fmnist_batch, tmp_path):
    x, y = fmnist_batch(120)
    config = EvalConfig(eps=(0.03, 0.08), attacks="fgsm,pgd(steps=2)", sanity_n=0, batch_size=64, plots=False)
    report = run_evaluation(zoo_mlp, (x, y), config, tmp_path)
    for entry in report.results:
        n = entry.n
        assert entry.intervals["robust_accuracy"] == list(clopper_pearson(round(entry.robust_accuracy * n), n))
        assert entry.intervals["clean_accuracy"] == list(clopper_pearson(round(entry.clean_accuracy * n), n))
        for stats in entry.attacks.values():
            low, high = stats.robust_accuracy_after_ci
            assert low <= stats.robust_accuracy_after <= high
            assert stats.topk.intervals["n"] == n and set(stats.topk.intervals["asr"]) == {"1", "2", "3", "5"}
        counts = entry.per_class
        assert sum(counts["n"]) == n
        assert sum(counts["clean_correct"]) == round(entry.clean_accuracy * n)
        assert sum(counts["robust"]) == round(entry.robust_accuracy * n)
        worst = entry.weakest_classes([str(c) for c in range(10)], 1)[0]
        assert worst[1] == min(r / c for r, c in zip(counts["robust"], counts["n"]) if c)
    markdown = (tmp_path / "report.md").read_text()
    assert "## Per class" in markdown and "Clopper-Pearson" in markdown and "weakest classes" in markdown


def test_fashion_mnist_class_names(fmnist_test):
    assert class_names(fmnist_test, "fashion-mnist", 10)[0] == "T-shirt/top"
    assert class_names((None, None), "tuple", 10) == [str(c) for c in range(10)]


def test_attack_and_transfer_reports_carry_intervals(zoo_mlp, fmnist_batch):
    from robustlab.eval import AttackConfig, TransferConfig, run_attack, run_transfer

    x, y = fmnist_batch(50)
    report = run_attack(zoo_mlp, (x, y), AttackConfig("pgd", 0.08, steps=2))
    assert report.intervals["robust_accuracy"] == list(clopper_pearson(round(report.robust_accuracy * 50), 50))
    assert "[" in report.rows()[1][1]
    matrix = run_transfer(["zoo:fmnist-cnn"], ["zoo:fmnist-mlp"], (x, y), TransferConfig(0.08, "fgsm"))
    cell = matrix.transfer["fgsm"]["zoo:fmnist-cnn"]["zoo:fmnist-mlp"]
    low, high = cell["intervals"]["asr"]["1"]
    assert low <= cell["asr"]["1"] <= high and cell["intervals"]["asr_n"]["1"] <= 50
    assert len(matrix.to_dict()["clean_accuracy_ci"]) == 2
