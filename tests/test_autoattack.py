"""AutoAttack (pyautoattack) and torchattacks through the evaluator; attack specs of the command line."""

from __future__ import annotations

import pytest
import torch

from robustlab.attacks import PGD, AttackResult, AutoAttack, TorchattacksAttack, attack_from_spec, split_specs
from robustlab.errors import RobustlabError
from robustlab.eval import Evaluator
from robustlab.threat import ThreatModel

pytestmark = pytest.mark.usefixtures("one_thread")


def test_autoattack_equals_a_direct_pyautoattack_run(zoo_cnn, fmnist_batch):
    """Same model, samples, eps and settings: the evaluator's AutoAttack robust accuracy is the package's.

    A custom list (apgd-ce, then apgd-t; 10 iterations, 1 restart, 3 target classes) keeps the test fast on a CPU; the
    standard version goes through the same code path with more iterations and attacks.
    """
    from pyautoattack import AutoAttack as PackageAutoAttack

    from robustlab.attacks.adapters import apply_overrides

    x, y = fmnist_batch(100)
    threat = ThreatModel("linf", 0.02)
    settings = {"n_iter": 10, "n_restarts": 1, "n_target_classes": 3}
    attack = AutoAttack(attacks=["apgd-ce", "apgd-t"], seed=3, **settings)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    result = Evaluator({"aa": attack}, threat, batch_size=100).run(zoo_cnn, (x, y))
    assert torch.equal(torch.random.get_rng_state(), before)  # the package's reseeding did not leak

    direct = PackageAutoAttack(zoo_cnn, attacks=["apgd-ce", "apgd-t"], eps=0.02, norm="Linf", seed=3, version="custom")
    apply_overrides(direct, **settings)
    _, y_adv = direct.run_standard_evaluation(x, y, batch_size=500)
    direct_robust = y_adv == y

    assert 0 < result.robust_accuracy < result.clean_accuracy  # a nontrivial case
    assert result.robust_accuracy == direct_robust.float().mean().item()
    assert torch.equal(result.robust, direct_robust)
    assert result.summary()["attacks"]["aa"]["attacked"] == int(result.clean_correct.sum())


def test_autoattack_after_pgd_attacks_only_what_pgd_left(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(40)
    attacks = {"pgd": PGD(steps=3), "aa": AutoAttack(attacks=["apgd-ce"], n_iter=3, n_restarts=1)}
    result = Evaluator(attacks, ThreatModel("linf", 0.03), batch_size=40).run(zoo_mlp, (x, y))
    assert torch.equal(result.attacked["aa"], result.robust_after["pgd"])
    assert result.robust_accuracy <= result.robust_after["pgd"].float().mean().item()


def test_torchattacks_adapter_projects_and_reports(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(10)
    threat = ThreatModel("linf", 0.05)
    out = TorchattacksAttack("square", n_queries=10)(zoo_mlp, x, y, threat)
    assert isinstance(out, AttackResult) and out.info["attack"] == "torchattacks:Square"
    assert threat.distance(out.x_adv, x).max() <= 0.05 + 1e-6
    assert torch.equal(out.success, zoo_mlp(out.x_adv).argmax(1) != y)
    out = attack_from_spec("torchattacks:CW(steps=3)")(zoo_mlp, x, y, ThreatModel("l2", 0.5))
    assert ThreatModel("l2", 0.5).distance(out.x_adv, x).max() <= 0.5 + 1e-5


def test_attack_specs():
    pgd = attack_from_spec("pgd+cw(steps=7,restarts=2)", seed=5, steps=3)
    assert (pgd.name, pgd.loss_name, pgd.steps, pgd.restarts, pgd.seed) == ("pgd", "cw", 7, 2, 5)
    assert attack_from_spec("ifgsm+normalized-ce").loss_name == "normalized-ce"
    assert attack_from_spec("fgsm", steps=None).steps == 1
    aa = attack_from_spec("autoattack", seed=2)
    assert (aa.version, aa.seed) == ("standard", 2)
    assert attack_from_spec("autoattack:plus").version == "plus"
    custom = attack_from_spec("autoattack:apgd-ce,apgd-t(n_iter=20)")
    assert (custom.version, custom.attacks, custom.overrides["n_iter"]) == ("custom", ["apgd-ce", "apgd-t"], 20)
    assert attack_from_spec("torchattacks:cw").name == "torchattacks:CW"
    assert split_specs("pgd,autoattack:apgd-ce,apgd-t(n_iter=5),torchattacks:CW(c=1,steps=9),fgsm") == [
        "pgd",
        "autoattack:apgd-ce,apgd-t(n_iter=5)",
        "torchattacks:CW(c=1,steps=9)",
        "fgsm",
    ]


@pytest.mark.parametrize(
    "spec, words",
    [
        ("pgdd", "unknown attack"),
        ("pgd+nope", "unknown loss"),
        ("autoattack:fast", "unknown AutoAttack version"),
        ("autoattack:apgd-ce,fab-x", "unknown AutoAttack attack"),
        ("torchattacks:Nope", "torchattacks has no attack"),
        ("torchattacks:CW(bogus=1)", "takes no argument"),
        ("pgd(steps)", "KEY=VALUE"),
    ],
)
def test_bad_specs_name_the_problem(spec, words):
    with pytest.raises(RobustlabError, match=words):
        attack_from_spec(spec)


def test_torchattacks_adapter_is_seeded_like_every_attack(zoo_mlp, fmnist_batch):
    """Its random start comes from its own seed, not the caller's RNG, which it leaves untouched."""
    x, y = fmnist_batch(16)
    threat = ThreatModel("linf", 0.05)
    torch.manual_seed(1)
    rng = torch.random.get_rng_state()
    a = TorchattacksAttack("PGD", steps=2, seed=4)(zoo_mlp, x, y, threat).x_adv
    assert torch.equal(torch.random.get_rng_state(), rng)
    torch.manual_seed(2)  # another caller state: the same attack
    assert torch.equal(a, TorchattacksAttack("PGD", steps=2, seed=4)(zoo_mlp, x, y, threat).x_adv)
    assert not torch.equal(a, TorchattacksAttack("PGD", steps=2, seed=5)(zoo_mlp, x, y, threat).x_adv)
    spec = attack_from_spec("torchattacks:PGD(steps=2)", seed=4)
    assert spec.seed == 4 and spec.config()["seed"] == 4 and torch.equal(a, spec(zoo_mlp, x, y, threat).x_adv)


@pytest.mark.parametrize("attack", [TorchattacksAttack("FGSM"), AutoAttack(attacks=["apgd-ce"], n_iter=2)])
def test_adapters_validate_labels_like_every_attack(zoo_mlp, fmnist_batch, attack):
    x, y = fmnist_batch(8)
    for labels in (y + 10, y - 20, y.float()):
        with pytest.raises(RobustlabError, match="labels"):
            attack(zoo_mlp, x, labels, ThreatModel("linf", 0.05))


@pytest.mark.parametrize(
    "make, word",
    [
        (lambda: AutoAttack(attacks=["apgd-ce"], n_iter=0), "n_iter"),
        (lambda: AutoAttack(n_restarts=-1), "n_restarts"),
        (lambda: AutoAttack(n_queries="many"), "n_queries"),
        (lambda: AutoAttack(seed="abc"), "seed"),
        (lambda: AutoAttack(batch_size=0), "batch_size"),
        (lambda: TorchattacksAttack("FGSM", eps="abc"), "eps"),
        (lambda: TorchattacksAttack("PGD", steps="many"), "steps"),
        (lambda: TorchattacksAttack("PGD", random_start="yes"), "random_start"),
        (lambda: TorchattacksAttack("PGD", seed="abc"), "seed"),
    ],
)
def test_adapter_options_are_checked_before_any_work(make, word):
    with pytest.raises(RobustlabError, match=word):
        make()
