"""robustlab eval's default protocol: as strong as pyautoattack standard at a tenth of its passes, and sanity checks
that cost at most a quarter of the attack passes without losing a flag."""

from __future__ import annotations

import json

import pytest
import torch
from fixture_models import rounding_cnn
from torch import nn

from robustlab.attacks import attack_from_spec
from robustlab.attacks.default import DefaultProtocol, stage_entries
from robustlab.eval import EvalConfig, Evaluator, run_evaluation
from robustlab.eval.sanity import run_sanity_checks
from robustlab.eval.sanity_budget import SanityBudget, robust_passes
from robustlab.models import load_model
from robustlab.models.counting import count_passes
from robustlab.threat import ThreatModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _robust_and_passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: str) -> tuple[torch.Tensor, int]:
    """Per-sample robustness under ``spec`` and the forward + backward passes, counted around the whole run."""
    attack = attack_from_spec(spec, seed=0, early_stop=True) if spec == "default" else attack_from_spec(spec)
    with count_passes(model) as passes:
        result = Evaluator({spec: attack}, ThreatModel("linf", 0.1), batch_size=len(y)).run(model, (x, y))
    return result.robust, passes.forward + passes.backward


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zoo:fmnist-cnn-pgdat", "zoo:fmnist-cnn-noiseaug"])
def test_default_is_as_strong_as_autoattack_standard_at_a_tenth_of_its_passes(name, fmnist_batch):
    pytest.importorskip("pyautoattack")
    x, y = fmnist_batch(8)
    model = load_model(name)
    ours, our_passes = _robust_and_passes(model, x, y, "default")
    reference, reference_passes = _robust_and_passes(model, x, y, "autoattack")
    assert int(ours.sum()) <= int(reference.sum()) + 1  # at most one sample more robust
    assert int((ours & ~reference).sum()) <= 1, (ours, reference)
    assert 10 * our_passes <= reference_passes, (our_passes, reference_passes)


def test_the_report_says_which_stage_broke_each_sample_and_what_each_cost(zoo_mlp, fmnist_batch, tmp_path):
    x, y = fmnist_batch(40)
    report = run_evaluation(zoo_mlp, (x, y), EvalConfig(eps=(0.1,), sanity_n=0, plots=False), tmp_path / "eval")
    assert EvalConfig(eps=(0.1,)).attacks == "default"
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    stages = saved["results"][0]["attacks"]
    assert list(stages) == ["default/apgd-ce", "default/apgd-t"]
    entry = report.results[0]
    broken = sum(s["broken"] for s in stages.values())
    assert broken == round(entry.n * (entry.clean_accuracy - entry.robust_accuracy))
    assert stages["default/apgd-ce"]["broken"] > 0
    assert all(s["forward_passes"] > 0 and s["backward_passes"] > 0 for s in stages.values())
    assert (
        stages["default/apgd-t"]["attacked"]
        == stages["default/apgd-ce"]["attacked"] - stages["default/apgd-ce"]["broken"]
    )


def test_called_directly_the_protocol_chains_its_stages(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(24)
    protocol = attack_from_spec("default", seed=0)
    assert isinstance(protocol, DefaultProtocol) and list(protocol.members) == ["apgd-ce", "apgd-t"]
    assert list(stage_entries({"default": protocol})) == ["default/apgd-ce", "default/apgd-t"]
    threat = ThreatModel("linf", 0.1)
    whole = Evaluator({"default": protocol}, threat, only_robust=False).run(zoo_mlp, (x, y))  # chained inside
    staged = Evaluator({"default": protocol}, threat).run(zoo_mlp, (x, y))
    assert list(whole.broken) == ["default"] and torch.equal(whole.robust, staged.robust)


def test_sanity_checks_cost_at_most_a_quarter_of_the_attack_passes_at_500_images(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(500)
    report = run_evaluation(zoo_mlp, (x, y), EvalConfig(eps=(0.1,), sanity_n=100, plots=False))
    attacks, sanity = (sum(report.cost[k].values()) for k in ("attacks", "sanity"))
    assert 0 < sanity <= 0.25 * attacks, (sanity, attacks)
    assert [f.name for f in report.sanity if f.fired] == []
    assert len(report.sanity) >= 7


def test_robust_passes_reads_the_budgets_of_the_stages():
    protocol = attack_from_spec("default", seed=0)
    # APGD-CE-100: 101 forward + 100 backward; APGD-T: 2 targets of the same, MALT's ranking 1 + 10 passes
    assert robust_passes(protocol) == 201 + 2 * 201 + 11
    assert robust_passes(attack_from_spec("square(n_queries=300)")) == 301
    assert SanityBudget.of({"a": attack_from_spec("autoattack")}, (torch.zeros(5), torch.zeros(5))) is None


def test_masked_model_flags_still_fire_under_the_budget(fmnist_batch):
    x, y = fmnist_batch(60)
    model = rounding_cnn().eval()
    budget = SanityBudget(500, robust_passes(attack_from_spec("default", seed=0)))  # a default eval of 500 images
    flags = run_sanity_checks(model, x, y, ThreatModel("linf", 0.1), steps=5, queries=100, budget=budget)
    fired = {f.name for f in flags if f.fired}
    assert {"zero_or_nan_gradients", "blackbox_beats_whitebox"} <= fired, [f.message for f in flags]
