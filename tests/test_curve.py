"""The whole robustness curve from one minimum-norm run, checked against fixed-eps attacks (the worst case wins)."""

from __future__ import annotations

import json

import pytest
import torch

from robustlab.attacks import attack_from_spec
from robustlab.cli import main
from robustlab.eval import Evaluator
from robustlab.eval.curve import check_points, eps_grid, robustness_curve
from robustlab.models import load_model
from robustlab.threat import ThreatModel

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoo_pgdat():
    return load_model("zoo:fmnist-cnn-pgdat")


def fixed_eps_robust(model, x, y, eps: float) -> float:
    """APGD at ``eps`` alone on every sample: its robust accuracy."""
    attack = attack_from_spec("apgd", seed=0)
    return Evaluator({"apgd": attack}, ThreatModel("linf", eps), only_robust=False).run(model, (x, y)).robust_accuracy


def test_the_curve_falls_with_eps_and_has_intervals(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(60)
    curve = robustness_curve(zoo_cnn, x, y, "linf", [0.05], steps=50)
    with torch.no_grad():
        clean = (zoo_cnn(x).argmax(1) == y).float().mean().item()
    assert curve.eps[0] == 0 and curve.robust_accuracy[0] == pytest.approx(clean)  # eps 0: clean accuracy
    assert all(a >= b for a, b in zip(curve.robust_accuracy, curve.robust_accuracy[1:]))
    assert all(low <= a <= high for a, (low, high) in zip(curve.robust_accuracy, curve.intervals))
    assert {0.025, 0.05, 0.075} <= set(curve.eps) and len(curve.eps) >= 21
    assert curve.median_norm is not None and 0 < curve.median_norm < 0.1
    at_median = curve.robust_accuracy[min(range(len(curve.eps)), key=lambda i: abs(curve.eps[i] - curve.median_norm))]
    assert abs(at_median - clean / 2) < 0.15  # half the correct samples are broken near the median norm
    assert curve.forward_passes > 0 and curve.backward_passes > 0 and not curve.random_forward
    d = curve.to_dict()
    assert json.loads(json.dumps(d))["checks"] == d["checks"]


def test_fixed_eps_attacks_win_where_the_curve_kept_a_sample(zoo_pgdat, fmnist_batch):
    x, y = fmnist_batch(40)
    weak = robustness_curve(zoo_pgdat, x, y, "linf", [0.1], steps=10)  # FMN with 10 steps misses breaks
    assert weak.overturned > 0 and "worst case" in weak.note()
    for check in weak.checks:  # at each checked eps never above the fixed-eps attack alone (same keyed attack)
        assert check["robust_accuracy"] <= check["curve_robust_accuracy"]
        assert weak.at(check["eps"]) == check["robust_accuracy"]
        assert weak.at(check["eps"]) <= fixed_eps_robust(zoo_pgdat, x, y, check["eps"]) + 1e-6
    assert [round(c["eps"], 6) for c in weak.checks] == [0.05, 0.1, 0.15]
    assert all(a >= b for a, b in zip(weak.robust_accuracy, weak.robust_accuracy[1:]))  # still a curve


def test_a_random_forward_pass_marks_the_curve_unreliable(fmnist_batch):
    from fixture_models import noisy_cnn

    x, y = fmnist_batch(16)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        curve = robustness_curve(noisy_cnn(0.15), x, y, "linf", [0.05], steps=5)
    assert curve.random_forward and "UNRELIABLE" in curve.note() and "UNRELIABLE" in curve.to_dict()["note"]


def test_check_points_and_grid():
    assert check_points([0.1], "linf", (0.0, 1.0)) == pytest.approx([0.05, 0.1, 0.15])
    assert check_points([0.01, 0.02, 0.03, 0.05], "linf", (0.0, 1.0)) == [0.01, 0.03, 0.05]
    assert check_points([0.9], "linf", (0.0, 1.0)) == pytest.approx([0.45, 0.9, 1.0])  # within the box
    grid = eps_grid([0.1], [0.05, 0.1, 0.15], "linf", (0.0, 1.0))
    assert grid[0] == 0 and max(grid) == pytest.approx(0.3) and 0.15 in grid


def test_curve_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    argv = ["eval", "--model", "zoo:fmnist-cnn", "--dataset", "fashion-mnist", "--n", "40", "--eps", "0.05",
            "--attacks", "pgd(steps=5)", "--sanity-n", "0", "--curve", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    curve = report["curve"]
    assert len(curve["eps"]) == len(curve["robust_accuracy"]) == len(curve["intervals"]) >= 21
    assert len(curve["checks"]) == 3 and "note" in curve
    headline = report["results"][0]["robust_accuracy"]
    assert curve["robust_accuracy"][curve["eps"].index(0.05)] <= headline + 0.1  # fmn + apgd vs pgd-5, n = 40
    assert "## Robustness curve" in (out / "report.md").read_text()
    assert (out / "robustness_curve.png").is_file()
    assert "robustness curve" in (out / "report.html").read_text()
