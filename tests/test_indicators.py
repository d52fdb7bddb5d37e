"""Indicators of attack failure (Pintor et al. 2022): each fires on a model built to trip it, not on a plain one."""

from __future__ import annotations

import pytest
import torch
from fixture_models import noisy_cnn, rounding_cnn
from torch import nn

from robustlab.eval.indicators import (
    MEANINGS,
    compute_indicators,
    gradient_behaviour,
    incomplete_optimization,
    silent_success,
    transfer_failure,
    unavailable_gradients,
    unconstrained_attack_failure,
    unstable_predictions,
)
from robustlab.eval.sanity import Flag, check_more_steps
from robustlab.models import load_model
from robustlab.threat import ThreatModel

pytestmark = pytest.mark.usefixtures("one_thread")

THREAT = ThreatModel("linf", 0.1)


@pytest.fixture(scope="module")
def zoo_pgdat():
    return load_model("zoo:fmnist-cnn-pgdat")


class Ripple(nn.Module):
    """zoo:fmnist-cnn plus fast sine ripples on the input: sign-gradient steps bounce, so more steps keep finding
    adversarial points that fewer steps miss."""

    def __init__(self, amplitude: float = 1.0, frequency: float = 300.0) -> None:
        super().__init__()
        self.net, self.amplitude, self.frequency = load_model("zoo:fmnist-cnn"), amplitude, frequency
        mix = torch.randn(784, 10, generator=torch.Generator().manual_seed(0)) / 28
        self.register_buffer("mix", mix)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.amplitude * (torch.sin(self.frequency * x).flatten(1) @ self.mix)


def test_silent_success_fires_on_a_random_forward_pass(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        noisy = silent_success(noisy_cnn(0.15), x, y, THREAT, steps=10, seed=0)
    assert noisy.fired and noisy.values["silent"] > 0  # the attack's pass said adversarial, the next pass not
    plain = silent_success(zoo_cnn, x, y, THREAT, steps=10, seed=0)
    assert plain.fired is False and plain.values["found"] > 0 and plain.values["silent"] == 0


def test_incomplete_optimization_fires_when_more_steps_break_more(zoo_pgdat, fmnist_batch):
    x, y = fmnist_batch(60)
    threat = ThreatModel("linf", 0.03)
    rippled = incomplete_optimization([check_more_steps(Ripple(), x, y, threat)])
    assert rippled.fired and "pgd-40" in rippled.message
    one = Flag("rises_with_steps", False, "", {"samples": 60, "robust_accuracy": {"pgd-10": 0.5, "pgd-40": 0.48}})
    assert incomplete_optimization([one]).fired is False  # one sample more broken of 60 is no trend
    plain = incomplete_optimization([check_more_steps(zoo_pgdat, x, y, THREAT)])
    assert plain.fired is False
    assert incomplete_optimization(None).fired is None and "not computed" in incomplete_optimization(None).message


def test_unavailable_gradients_fires_on_rounding(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(16)
    rounded = unavailable_gradients(gradient_behaviour(rounding_cnn(), x, y, THREAT))
    assert rounded.fired and rounded.values["zero_fraction"] == 1.0 and rounded.values["output_changes"] > 0
    assert rounded.values["piecewise_constant"] > 0.5  # a staircase: small pokes change nothing
    plain = unavailable_gradients(gradient_behaviour(zoo_cnn, x, y, THREAT))
    assert plain.fired is False and plain.values["piecewise_constant"] == 0 and not plain.values["useless"]


def test_unstable_predictions_fires_on_input_noise(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        noisy = unstable_predictions(noisy_cnn(0.15), x, y, THREAT)
    assert noisy.fired and noisy.values["relative_loss_change"] > 0.5
    plain = unstable_predictions(zoo_cnn, x, y, THREAT)
    assert plain.fired is False and plain.values["relative_loss_change"] < plain.values["threshold"]


def test_transfer_failure_fires_when_the_surrogates_examples_do_not_transfer(zoo_cnn, zoo_pgdat, fmnist_batch):
    x, y = fmnist_batch(32)
    robust = transfer_failure(zoo_pgdat, x, y, THREAT, zoo_cnn, steps=10, seed=0)
    assert robust.fired and robust.values["surrogate_broken"] > 10 and robust.values["fraction"] > 0.5
    same = transfer_failure(zoo_cnn, x, y, THREAT, zoo_cnn, steps=10, seed=0)  # the surrogate is the model
    assert same.fired is False and same.values["failed"] == 0
    assert transfer_failure(zoo_cnn, x, y, THREAT, None, steps=10, seed=0).fired is None


def test_unconstrained_attack_failure_fires_when_gradients_are_blind(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(32)
    blind = unconstrained_attack_failure(rounding_cnn(), x, y, THREAT, steps=10, seed=0)
    assert blind.fired and blind.values["robust"] == blind.values["correct"] > 0
    plain = unconstrained_attack_failure(zoo_cnn, x, y, THREAT, steps=10, seed=0)
    assert plain.fired is False and plain.values["robust"] == 0


def test_all_indicators_from_one_call_with_their_meaning(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(16)
    indicators = compute_indicators(zoo_cnn, x, y, THREAT)
    assert [i.name for i in indicators] == list(MEANINGS)
    assert all(i.meaning == MEANINGS[i.name] and i.message for i in indicators)
    assert [i.name for i in indicators if i.fired] == []
    assert {i.name for i in indicators if i.fired is None} == {"incomplete_optimization", "transfer_failure"}


def test_an_evaluation_reports_the_indicators_beside_its_flags(zoo_cnn, fmnist_batch):
    from robustlab.eval import EvalConfig, run_evaluation

    x, y = fmnist_batch(40)
    report = run_evaluation(zoo_cnn, (x, y), EvalConfig(eps=(0.03,), attacks="pgd(steps=3)", sanity_n=20, steps=3,
                                                        plots=False))  # fmt: skip
    assert [i["name"] for i in report.indicators] == list(MEANINGS)
    assert [i["name"] for i in report.indicators if i["fired"]] == []
    incomplete = next(i for i in report.indicators if i["name"] == "incomplete_optimization")
    assert incomplete == incomplete_optimization(report.sanity).to_dict()  # from the sanity check's own numbers
    assert "pgd-3" in incomplete["message"] and "pgd-12" in incomplete["message"]
    text = report.to_markdown()
    assert "## Indicators of attack failure" in text and text.index("## Sanity checks") < text.index("## Indicators")
    assert report.to_dict()["indicators"] == report.indicators
