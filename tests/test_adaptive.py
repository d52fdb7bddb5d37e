"""Adaptive evaluation: the headline never overstates robustness. A masking flag adds the attacks that answer it
(BPDA-PGD and Square for zero gradients, EOT-PGD for a random forward pass); --adaptive off marks it unreliable."""

from __future__ import annotations

import json

import pytest
import torch
from fixture_models import noisy_cnn, rounding_cnn

from robustlab.attacks import PGD, AutoAttack, TransferAttack
from robustlab.attacks.bpda import BPDAAttack
from robustlab.cli import main
from robustlab.eval import EvalConfig, Evaluator, run_evaluation
from robustlab.models.bpda import BPDA, bpda, masking_modules
from robustlab.threat import ThreatModel

pytestmark = pytest.mark.usefixtures("one_thread")

THREAT = ThreatModel("linf", 0.1)


def test_bpda_keeps_the_forward_pass_and_passes_the_gradient(fmnist_batch):
    x, _ = fmnist_batch(8)
    model = rounding_cnn()
    assert masking_modules(model, x) == ["preprocess"]
    xg = x.clone().requires_grad_(True)
    model(xg).sum().backward()
    assert (xg.grad == 0).all()  # rounding: no gradient at all
    with bpda(model, ["preprocess"]) as wrapped:
        assert isinstance(wrapped.preprocess, BPDA)
        assert torch.equal(wrapped(x), rounding_cnn()(x))  # same predictions
        xg = x.clone().requires_grad_(True)
        wrapped(xg).sum().backward()
        assert (xg.grad != 0).any()
    assert not isinstance(model.preprocess, BPDA)  # put back


@pytest.mark.slow
def test_rounding_defence_plain_pgd_overstates_and_the_default_eval_does_not(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(150)
    model = rounding_cnn()
    common = dict(eps=(0.1,), attacks="pgd", sanity_n=40, plots=False, adaptive_queries=300)
    plain = run_evaluation(model, (x, y), EvalConfig(**common, adaptive="off"))
    adaptive = run_evaluation(model, (x, y), EvalConfig(**common))
    assert {"zero_or_nan_gradients", "blackbox_beats_whitebox"} <= set(plain.adaptive["fired"])
    assert plain.adaptive["added"] == {} and plain.headline_note.startswith("UNRELIABLE")
    assert "UNRELIABLE" in plain.to_markdown()
    added = adaptive.adaptive["added"]
    assert any(name.startswith("bpda-pgd") for name in added) and "autoattack:square(n_queries=300)" in added
    assert "upper bound" in adaptive.headline_note and "flags" in adaptive.headline_note

    # each answer on its own, on every sample: BPDA-PGD, Square, and PGD transferred from the clean CNN
    answers = {
        "bpda": BPDAAttack(PGD(steps=20), ["preprocess"]),
        "square": AutoAttack(attacks=["square"], n_queries=300),
        "transfer": TransferAttack(PGD(steps=20), zoo_cnn),
    }
    alone = Evaluator(answers, THREAT, only_robust=False).run(model, (x, y))
    best = min((alone.clean_correct & ~s).float().mean().item() for s in alone.broken.values())
    headline, overstated = adaptive.results[0].robust_accuracy, plain.results[0].robust_accuracy
    assert overstated > best + 0.3  # plain PGD sees no gradient: robustness grossly overstated
    assert headline <= best + 0.03


@pytest.mark.slow
def test_noise_defence_plain_pgd_overstates_and_eot_closes_the_gap(fmnist_batch):
    x, y = fmnist_batch(100)
    model = noisy_cnn(0.15)  # Gaussian noise on the input at every forward pass
    threat = ThreatModel("linf", 0.05)
    with torch.random.fork_rng():  # the model draws from the global RNG: fixed draws, the caller's state kept
        torch.manual_seed(0)
        common = dict(eps=(0.05,), attacks="pgd", sanity_n=40, plots=False)
        # the plain protocol judged by the same rule (mean logits of 10 passes): only EOT differs
        plain = run_evaluation(model, (x, y), EvalConfig(**common, adaptive="off", predictions=10))
        adaptive = run_evaluation(model, (x, y), EvalConfig(**common))
        strong = Evaluator({"eot": PGD(steps=20, eot_samples=20)}, threat, only_robust=False, predictions=10)
        reference = strong.run(model, (x, y)).robust_accuracy
    assert "random_forward" in adaptive.adaptive["fired"] and adaptive.judgement["predictions"] == 10
    assert any("eot" in name for name in adaptive.adaptive["added"])
    assert plain.results[0].robust_accuracy > reference + 0.07  # PGD without EOT overstates
    assert adaptive.results[0].robust_accuracy <= reference + 0.05  # EOT-PGD closes most of the gap (n = 100)


def test_a_plain_model_gets_nothing_added_and_the_same_numbers(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(60)
    common = dict(eps=(0.03,), attacks="pgd(steps=3)", sanity_n=30, steps=3, plots=False)
    on = run_evaluation(zoo_cnn, (x, y), EvalConfig(**common))
    off = run_evaluation(zoo_cnn, (x, y), EvalConfig(**common, adaptive="off"))
    assert on.adaptive["fired"] == [] and on.adaptive["added"] == {} and on.attack_names == ["pgd(steps=3)"]
    assert "no gradient-masking flag fired" in on.headline_note
    assert [e.robust_accuracy for e in on.results] == [e.robust_accuracy for e in off.results]
    assert on.results[0].attacks["pgd(steps=3)"].broken == off.results[0].attacks["pgd(steps=3)"].broken


def test_bpda_from_the_command_line(tmp_path, capsys, cli_error):
    base = ["eval", "--model", "fixture_models:rounding_cnn", "--dataset", "fashion-mnist", "--n", "60", "--eps",
            "0.1", "--attacks", "pgd", "--sanity-n", "0", "--no-plots", "--no-progress"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert main([*base, "--bpda", "preprocess", "--out", str(tmp_path / "bpda")]) == 0
    plain, through = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("plain", "bpda"))
    assert through["results"][0]["robust_accuracy"] < plain["results"][0]["robust_accuracy"] - 0.3
    assert "preprocess" in str(through["config"]["bpda"]) and "NOT checked" in through["adaptive"]["headline"]
    capsys.readouterr()
    cli_error([*base, "--bpda", "nosuch", "--out", str(tmp_path / "bad")], "no module", "nosuch")
    cli_error([*base, "--adaptive", "maybe", "--out", str(tmp_path / "bad")], "adaptive")


def test_eot_is_an_option_of_the_gradient_loop(fmnist_batch):
    from robustlab.attacks import attack_from_spec

    x, y = fmnist_batch(16)
    model = noisy_cnn(0.15)
    attack = attack_from_spec("pgd(eot_samples=4,steps=3)", seed=1)
    assert attack.config()["eot_samples"] == 4
    state = torch.random.get_rng_state()
    first, second = attack(model, x, y, THREAT), attack(model, x, y, THREAT)
    assert torch.equal(torch.random.get_rng_state(), state)  # the passes' randomness came from a fork
    assert torch.equal(first.x_adv, second.x_adv)  # seeded from the attack's own generator


def test_a_samples_random_start_does_not_depend_on_its_batch(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(12)
    attack = PGD(steps=3, restarts=2, seed=3)
    whole = attack(zoo_cnn, x, y, THREAT).x_adv
    part = attack(zoo_cnn, x[5:9], y[5:9], THREAT).x_adv
    assert torch.allclose(whole[5:9], part, atol=1e-6)
    batch_drawn = PGD(steps=3, restarts=2, seed=3, keyed_start=False)
    assert not torch.allclose(
        batch_drawn(zoo_cnn, x, y, THREAT).x_adv[5:9], batch_drawn(zoo_cnn, x[5:9], y[5:9], THREAT).x_adv
    )
