"""The attack registry: one entry per attack feeds the spec parser, the CLI's attack choice and its --help.

A new attack is one small class plus one ``register`` line; the toy attack below is the whole example.
"""

import json

import pytest
import torch
from torch import Tensor, nn

from robustlab import RobustlabError, ThreatModel
from robustlab.attacks import (
    FGSM,
    PGD,
    Attack,
    AttackBase,
    AttackResult,
    attack_entry,
    attack_from_spec,
    attack_help,
    attack_names,
    make_attack,
    register,
    split_specs,
    unregister,
)
from robustlab.cli import main
from robustlab.criteria import Misclassified
from robustlab.losses import cross_entropy


class RandomSign(AttackBase):
    """A toy attack: a corner of the eps-cube drawn at random (a baseline every real attack must beat); AttackBase
    gives it the protocol's defaults (reported under its spec, batch-dependent, no fixed step size)."""

    name = "toy"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def config(self) -> dict:
        return {"attack": self.name, "seed": self.seed}

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        signs = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
        x_adv = threat.project(x + threat.eps * signs, x)
        with torch.no_grad():
            logits = model(x_adv)
        return AttackResult(x_adv, Misclassified()(logits, y), cross_entropy(logits, y), logits)


@pytest.fixture
def toy():
    register("toy", RandomSign, "a random corner of the eps-cube")  # the one registry line: it takes seed
    yield
    unregister("toy")


def test_a_registered_attack_is_built_from_specs(toy, zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(32)
    attack = attack_from_spec("toy(seed=3)", steps=10, loss="cw")  # shared defaults it does not take are left out
    assert isinstance(attack, RandomSign) and isinstance(attack, Attack) and attack.seed == 3
    assert attack_from_spec("toy", seed=7).seed == 7 and make_attack("toy").seed == 0
    result = attack(zoo_cnn, x, y, ThreatModel("linf", 0.1))
    assert ((result.x_adv - x).abs().max() - 0.1).abs() < 1e-6 and result.success.dtype == torch.bool
    assert "toy" in attack_names() and "toy: a random corner" in attack_help(summaries=True)
    with pytest.raises(RobustlabError, match="takes no loss"):
        attack_from_spec("toy+cw")
    with pytest.raises(RobustlabError, match="toy"):
        attack_from_spec("toy(steps=3)")  # an option written in the spec must exist
    with pytest.raises(ValueError, match="registered already"):
        register("toy", RandomSign, "again")


def test_a_registered_attack_runs_from_the_cli(toy, tmp_path, capsys):
    data = ["--model", "zoo:fmnist-cnn", "--dataset", "fashion-mnist", "--n", "16", "--no-progress", "--eps", "0.1"]
    assert main(["eval", *data, "--attacks", "pgd,toy", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert "toy" in json.dumps(report["attacks"])
    assert main(["attack", *data, "--attacks", "toy", "--out", str(tmp_path / "attack")]) == 0
    report = json.loads((tmp_path / "attack" / "report.json").read_text())
    assert report["attack"]["attack"] == "toy"
    capsys.readouterr()


def test_each_entry_says_which_shared_defaults_it_takes():
    defaults = {"steps": 5, "step_size": 0.01, "loss": "cw", "restarts": 3, "seed": 2}
    fgsm = attack_from_spec("fgsm", **defaults)  # no steps, no restarts: no caller special-cases fgsm
    assert isinstance(fgsm, FGSM) and (fgsm.steps, fgsm.restarts, fgsm.step_size, fgsm.seed) == (1, 1, 0.01, 2)
    pgd = attack_from_spec("pgd", **defaults)
    assert isinstance(pgd, PGD) and (pgd.steps, pgd.restarts, pgd.loss_name) == (5, 3, "cw")
    assert attack_from_spec("autoattack", **defaults).seed == 2
    assert attack_entry("bim").name == "ifgsm" and attack_entry("I-FGSM").name == "ifgsm"
    assert attack_entry("fgsm").takes[:3] == ("step_size", "loss", "seed")  # then early_stop, layout, precision
    # explicit options are not filtered: fgsm refuses several steps
    with pytest.raises(RobustlabError, match="exactly one step"):
        make_attack("fgsm", steps=5)
    with pytest.raises(RobustlabError, match="unknown attack"):
        attack_from_spec("deepfool")


def test_help_lists_every_registered_attack():
    text = attack_help()
    for syntax in ("fgsm", "ifgsm", "pgd", "mifgsm", "topk", "autoattack[:VARIANT]", "torchattacks:NAME"):
        assert syntax in text
    assert attack_names()[:5] == ["fgsm", "ifgsm", "pgd", "mifgsm", "topk"]


def test_split_specs_keeps_options_and_autoattack_lists_whole():
    assert split_specs("pgd(steps=5,seed=1), autoattack:apgd-ce,apgd-t, fgsm") == [
        "pgd(steps=5,seed=1)",
        "autoattack:apgd-ce,apgd-t",
        "fgsm",
    ]


def test_every_attack_speaks_the_one_protocol():
    """name, config() and __call__(model, x, y, threat, target=None), plus spec, per_sample and resolve_step_size
    (AttackBase's defaults): the evaluator and the CLI need nothing else."""
    import inspect

    from robustlab.attacks import Targeted, TransferAttack

    built = [
        attack_from_spec(spec) for spec in ("fgsm", "ifgsm", "pgd", "mifgsm", "topk", "autoattack", "torchattacks:CW")
    ]
    for attack in [*built, Targeted(PGD()), TransferAttack(PGD(), nn.Identity())]:
        assert isinstance(attack, Attack) and isinstance(attack.name, str) and isinstance(attack.config(), dict)
        assert isinstance(attack.spec, str) and isinstance(attack.per_sample, bool)
        parameters = inspect.signature(attack.__call__).parameters
        assert list(parameters) == ["model", "x", "y", "threat", "target"] and parameters["target"].default is None
