"""The top-k attack: the normalized CE loss, top-k success criteria, the TopK preset (untargeted and targeted)."""

import json

import pytest
import torch

from robustlab import ThreatModel
from robustlab.attacks import IFGSM
from robustlab.attacks.topk import TopK
from robustlab.cli import main
from robustlab.criteria import Misclassified, TargetedMisclassified, interest_class_rank
from robustlab.errors import RobustlabError
from robustlab.eval.metrics import topk_metrics
from robustlab.losses import get_loss, topk_targeted


def test_normalized_ce_is_mean_logit_minus_true_logit_with_constant_gradient():
    torch.manual_seed(0)
    logits = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 9, 3, 5, 1])
    loss = get_loss("normalized-ce")(logits, labels)
    expected = logits.mean(1) - logits[torch.arange(6), labels]
    assert torch.allclose(loss, expected)
    # it is CE(z, y) minus the mean CE over all classes
    ce = torch.nn.functional.cross_entropy
    mean_ce = torch.stack([ce(logits, torch.full_like(labels, k), reduction="none") for k in range(10)]).mean(0)
    assert torch.allclose(loss, ce(logits, labels, reduction="none") - mean_ce)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    onehot = torch.nn.functional.one_hot(labels, 10).double()
    assert torch.allclose(grad, 1 / 10 - onehot)
    # the gradient does not depend on the logits: CE's vanishes as the true class falls, this one does not
    (grad_far,) = torch.autograd.grad(get_loss("normalized-ce")(logits * 50, labels).sum(), logits)
    assert torch.allclose(grad_far, 50 * (1 / 10 - onehot))


def test_topk_criteria_on_hand_made_logits():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0], [1.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    labels = torch.tensor([0, 0, 2])
    assert interest_class_rank(logits, labels).tolist() == [1, 4, 2]
    assert Misclassified(1)(logits, labels).tolist() == [False, True, True]
    assert Misclassified(2)(logits, labels).tolist() == [False, True, False]
    assert Misclassified(3)(logits, labels).tolist() == [False, True, False]
    # targeted top-k: target top-1 and the true class out of the top k, a combination of two criteria
    target, true = torch.tensor([0, 1, 3]), torch.tensor([1, 0, 2])
    assert (TargetedMisclassified() & Misclassified(1))(logits, true, target).tolist() == [True, True, True]
    assert (TargetedMisclassified() & Misclassified(2))(logits, true, target).tolist() == [False, True, False]
    assert (TargetedMisclassified() & Misclassified(3))(logits, true, target).tolist() == [False, True, False]
    either = TargetedMisclassified() | ~Misclassified(1)
    assert either(logits, labels, torch.tensor([0, 2, 3])).tolist() == [True, False, True] and "|" in either.name


def test_topk_targeted_loss_and_its_misuse():
    logits = torch.randn(4, 10, requires_grad=True)
    target, true = torch.tensor([1, 2, 0, 7]), torch.tensor([0, 5, 9, 3])
    loss = topk_targeted(logits, target, true)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    assert torch.allclose(loss, ce + logits[torch.arange(4), true] - logits.mean(1))
    # a targeted loss serves targeted calls only
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10))
    with pytest.raises(RobustlabError, match="targeted loss"):
        IFGSM(loss="topk-targeted")(model, torch.rand(4, 4), true, ThreatModel("linf", 0.1))


@pytest.fixture(scope="module")
def batch(fmnist_batch):
    return fmnist_batch(100)


def test_normalized_ce_pushes_the_true_class_further_down_than_ce(zoo_cnn, batch):
    x, y = batch
    threat = ThreatModel("linf", 0.1)
    with torch.no_grad():
        clean = zoo_cnn(x)
    ce = IFGSM(steps=10, loss="ce")(zoo_cnn, x, y, threat)
    nce = TopK(steps=10)(zoo_cnn, x, y, threat)
    m_ce = topk_metrics(ce.logits, y, clean, [1, 2, 3, 5])
    m_nce = topk_metrics(nce.logits, y, clean, [1, 2, 3, 5])
    for k in ("2", "3", "5"):
        assert m_nce["asr"][k] > m_ce["asr"][k] + 0.1
    assert m_nce["icr"]["mean"] > m_ce["icr"]["mean"] + 1
    # the preset is I-FGSM with the normalized CE loss: same step size, same loop
    assert nce.info["loss"] == "normalized-ce" and nce.info["step_size"] == pytest.approx(0.01)
    assert nce.info["k"] == 1 and nce.info["attack"] == "topk-ifgsm"


def test_topk_success_means_out_of_the_top_k(zoo_cnn, batch):
    x, y = batch
    threat = ThreatModel("linf", 0.1)
    out = TopK(k=3, base="pgd", restarts=2, early_stop=True, steps=5)(zoo_cnn, x, y, threat)
    ranks = interest_class_rank(out.logits, y)
    assert torch.equal(out.success, ranks > 3)
    assert 0.3 < out.success.float().mean() < 1  # some pushed out of the top 3, not trivially all
    assert (threat.distance(out.x_adv, x) <= 0.1 + 1e-6).all()
    # early stopping at k = 3 stops at the first step out of the top 3; without it the rank keeps falling
    full = TopK(k=3, base="pgd", restarts=2, steps=5)(zoo_cnn, x, y, threat)
    assert interest_class_rank(full.logits, y).float().mean() > ranks.float().mean()


def test_targeted_topk_drives_target_up_and_true_class_down(zoo_cnn, batch):
    x, y = batch
    threat = ThreatModel("linf", 0.15)
    target = (y + 1) % 10
    out = TopK(k=3, base="pgd", steps=10)(zoo_cnn, x, y, threat, target=target)
    assert torch.equal(out.info["target"], target)
    assert torch.equal(out.success, (out.logits.argmax(1) == target) & (interest_class_rank(out.logits, y) > 3))
    assert out.success.float().mean() > 0.5
    # against CE towards the target alone (same loop, same budget) the true class ends further down
    ce_only = TopK(k=3, base="pgd", steps=10, targeted_loss="ce")(zoo_cnn, x, y, threat, target=target)
    assert interest_class_rank(out.logits, y).float().mean() > interest_class_rank(ce_only.logits, y).float().mean()
    with pytest.raises(RobustlabError, match="equals the true class"):
        TopK()(zoo_cnn, x, y, threat, target=y)


def test_topk_rejects_bad_configuration():
    with pytest.raises(RobustlabError, match="k must be"):
        TopK(k=0)
    with pytest.raises(RobustlabError, match="builds on"):
        TopK(base="fgsm")


def test_attack_cli_reports_topk_asr_and_icr(tmp_path, capsys):
    args = ["attack", "--model", "zoo:fmnist-cnn", "--dataset", "fashion-mnist", "--n", "64", "--no-progress"]
    code = main([*args, "--attacks", "ifgsm", "--loss", "normalized-ce", "--eps", "0.1", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "top-3 ASR" in printed and "interest class rank" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["topk"]["asr"]) == ["1", "2", "3", "5"]
    assert report["topk"]["asr"]["1"] == pytest.approx(report["attack_success_rate"])
    assert sum(report["topk"]["icr"]["histogram"]) == 64
    k10 = str(tmp_path / "k10")
    assert main([*args, "--attacks", "ifgsm", "--eps", "0.1", "--topk", "1,10", "--n", "8", "--out", k10]) == 2
    err = capsys.readouterr().err
    assert "10" in err and "class" in err  # k = 10 is impossible for 10 classes


def test_topk_attack_spec():
    from robustlab.attacks.registry import attack_from_spec

    attack = attack_from_spec("topk(k=3,base=pgd)", steps=5, seed=1)
    assert isinstance(attack, TopK) and attack.config()["criterion"] == "top3-misclassified"
    assert attack.config()["steps"] == 5 and attack.config()["loss"] == "normalized-ce"
    assert attack_from_spec("topk+ce").config()["loss"] == "ce"


def test_criteria_take_the_true_labels_and_the_target():
    """The old two-argument form cannot tell the true class from the target: refused when the attack is built."""
    with pytest.raises(RobustlabError, match=r"criterion\(logits, y, target=None\)"):
        IFGSM(criterion=lambda logits, labels: logits.argmax(1) != labels)
    assert IFGSM(criterion=lambda logits, y, target=None: logits.argmax(1) != y).criterion is not None
    assert (TargetedMisclassified() & Misclassified(3)).name == "targeted & top3-misclassified"
    with pytest.raises(RobustlabError, match="needs targets"):
        TargetedMisclassified()(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_nested_eps_topk_rows_never_below_the_worst_case_at_any_eps_k_or_attack(zoo_cnn, fmnist_batch):
    """With nested eps a sample broken at a smaller eps carries its example's rank forward: every cumulative row's
    top-k robust accuracy is at least the worst case's, the last row equals it, and rows only fall attack by attack
    and eps by eps (the README's first-steps eval: --eps 0.05,0.1 --attacks fgsm,pgd)."""
    from robustlab.eval.run import EvalConfig, run_evaluation

    x, y = fmnist_batch(60)
    config = EvalConfig(eps=(0.05, 0.1, 0.15), attacks="fgsm,pgd(steps=5)", topk=(1, 2, 3, 5), sanity_n=0, plots=False)
    report = run_evaluation(zoo_cnn, (x, y), config)
    assert report.protocol == "nested" and len(report.results) == 3
    carried_any = False
    previous = None
    for entry in report.results:
        worst = entry.worst_case_topk.robust_accuracy
        assert worst[1] == pytest.approx(entry.robust_accuracy)
        rows = [entry.attacks[a].topk.robust_accuracy for a in ("fgsm", "pgd(steps=5)")]
        for k in (1, 2, 3, 5):
            assert rows[0][k] >= rows[1][k] >= worst[k], (entry.eps, k, rows, worst)
            assert rows[1][k] == pytest.approx(worst[k])  # the last cumulative row is the worst case
            if previous is not None:
                assert worst[k] <= previous[k] + 1e-9  # a larger eps never raises a top-k robust accuracy
        previous = worst
        carried_any |= entry.robust_accuracy < entry.clean_accuracy
    assert carried_any
    # a sample broken at a smaller eps is not "out of the top k for every k": at eps 0.05 something stays in the top 5
    assert report.results[1].worst_case_topk.robust_accuracy[5] > report.results[1].robust_accuracy


def test_default_ks_stay_below_the_number_of_classes():
    from robustlab.eval.metrics import default_topk

    assert default_topk(10) == [1, 2, 3, 5] and default_topk(100) == [1, 5, 10]
    assert default_topk(3) == [1, 2] and default_topk(2) == [1] and default_topk(5) == [1, 2, 3]


def test_three_class_attack_reports_no_top_k_at_or_above_the_classes(fmnist_batch):
    """On 3-class data the report used to print "top-5 ASR 0.00 %" (the true class is always in the top 3)."""
    from robustlab.eval import AttackConfig, run_attack

    x, y = fmnist_batch(40)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 3)).eval()
    report = run_attack(model, (x, y % 3), AttackConfig("fgsm", 0.1))
    assert sorted(report.topk.asr) == [1, 2]
    assert "top-5" not in report.to_markdown() and "top-3" not in report.to_markdown()
