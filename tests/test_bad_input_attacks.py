"""Every bad attack input is one line and exit code 2, before any work: attack specs, threat settings, inputs.

Each case runs through the command line in-process (``cli_error``: exit 2, one stderr line naming the problem, no
traceback) for every subcommand that takes attack specs, and through the Python API where it is a library error.
"""

import pytest
import torch

from robustlab import RobustlabError, ThreatModel
from robustlab.attacks import PGD, attack_from_spec, split_specs

# (spec, a word the one line must contain)
SPEC_CASES = [
    ("pgd(steps=)", "steps"),
    ("pgd(steps=abc)", "steps"),
    ("pgd(restarts=x)", "restarts"),
    ("pgd(steps=2))", "parentheses"),
    ("pgd(steps=2", "parentheses"),
    ("pgd(steps=2,steps=3)", "twice"),
    ("mifgsm(momentum=abc)", "momentum"),
    ("pgd(seed=abc)", "seed"),
    ("pgd(step_size=nan)", "step size"),
    ("pgd(step_size=1e999)", "step size"),
    ("mifgsm(diversity_prob=2)", "diversity_prob"),
    ("fgsm(steps=3)", "one step"),
    ("pgd(foo=1)", "foo"),
    ("autoattack(foo=1)", "foo"),
    ("autoattack:apgd-ce(n_iter=0)", "n_iter"),
    ("autoattack:apgd-ce,apgd-t(n_restarts=abc)", "n_restarts"),
    ("autoattack+ce", "no loss"),
    ("torchattacks:FGSM(eps=abc)", "eps"),
    ("torchattacks:PGD(steps=1.5)", "steps"),
    ("topk(k=0)", "k"),
    ("topk(k=3,base=fgsm)", "builds on"),
]
# cases found once the attack sees the model: its number of classes
MODEL_CASES = [("topk(k=10)", "k=10"), ("topk(k=11,base=pgd)", "k=11")]
DATA = ["--dataset", "fashion-mnist", "--n", "8", "--no-progress"]


def attack_cmd(spec: str, out, *extra: str) -> list:
    return ["attack", "--model", "zoo:fmnist-cnn", *DATA, "--attacks", spec, "--eps", "0.1", "--out", out, *extra]


def eval_cmd(specs: str, out, *extra: str) -> list:
    return ["eval", "--model", "zoo:fmnist-cnn", *DATA, "--attacks", specs, "--eps", "0.1", "--out", out, *extra]


def transfer_cmd(specs: str, out, *extra: str) -> list:
    models = ["--source", "zoo:fmnist-cnn", "--targets", "zoo:fmnist-mlp"]
    return ["transfer", *models, *DATA, "--attacks", specs, "--eps", "0.1", "--out", out, *extra]


COMMANDS = {"attack": attack_cmd, "eval": eval_cmd, "transfer": transfer_cmd}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("spec, word", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_attack_specs_are_one_line_in_every_subcommand(cli_error, tmp_path, command, spec, word):
    cli_error(COMMANDS[command](spec, tmp_path / "out"), word)
    assert not (tmp_path / "out" / "report.json").exists()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("spec, word", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_topk_with_k_not_below_the_classes_is_one_line(cli_error, tmp_path, command, spec, word):
    cli_error(COMMANDS[command](spec, tmp_path / "out"), word, "10-class")


@pytest.mark.parametrize("command", ["eval", "transfer"])
@pytest.mark.parametrize(
    "specs", ["pgd,pgd", "fgsm, pgd(steps=3),FGSM", "autoattack:apgd-ce,apgd-t,autoattack:apgd-ce,apgd-t"]
)
def test_the_same_attack_twice_in_a_list_is_refused(cli_error, tmp_path, command, specs):
    cli_error(COMMANDS[command](specs, tmp_path / "out"), "twice")


THREAT_CASES = [
    (["--eps", "8"], "exceeds the width"),
    (["--eps", "nan"], "eps"),
    (["--eps", "inf"], "eps"),
    (["--eps", "-0.1"], "eps"),
    (["--step-size", "nan"], "step-size"),
    (["--step-size", "inf"], "step-size"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("extra, word", THREAT_CASES, ids=[" ".join(c[0]) for c in THREAT_CASES])
def test_impossible_threat_settings_are_one_line(cli_error, tmp_path, command, extra, word):
    cli_error(COMMANDS[command]("pgd", tmp_path / "out", *extra), word)


@pytest.mark.parametrize("spec, word", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_attack_specs_are_library_errors(spec, word):
    with pytest.raises(RobustlabError, match=word):
        attack_from_spec(spec, steps=10, seed=0)


def test_duplicates_and_impossible_settings_are_library_errors(zoo_mlp, fmnist_batch):
    with pytest.raises(RobustlabError, match="twice"):
        split_specs("pgd,PGD")
    with pytest.raises(RobustlabError, match="exceeds the width"):
        ThreatModel("linf", 1.5)
    x, y = fmnist_batch(8)
    with pytest.raises(RobustlabError, match="k=10"):
        attack_from_spec("topk(k=10)")(zoo_mlp, x, y, ThreatModel("linf", 0.1))
    for bad in (float("nan"), float("inf")):
        noisy = x.clone()
        noisy[0, 0, 0, 0] = bad
        with pytest.raises(RobustlabError, match="NaN or inf"):
            PGD(steps=1)(zoo_mlp, noisy, y, ThreatModel("linf", 0.1))
        with pytest.raises(RobustlabError, match="NaN or inf"):
            ThreatModel("linf", 0.1).check_inputs(noisy)
    with pytest.raises(RobustlabError, match="labels"):
        PGD(steps=1)(zoo_mlp, x, torch.full_like(y, 10), ThreatModel("linf", 0.1))


@pytest.mark.parametrize("target, word", [("nearest", "target rule"), ("12", "out of range"), ("-1", "target rule")])
def test_bad_targets_are_one_line(cli_error, tmp_path, target, word):
    cli_error(attack_cmd("pgd(steps=1)", tmp_path / "out", "--target", target), word)
