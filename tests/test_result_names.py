"""One word, one meaning: an attack's ``success`` is its criterion; an evaluation's ``broken`` is top-1 wrong.

``EvalResult.criterion`` holds each attack's own success (its criterion, e.g. the true class out of the top 3);
``EvalResult.broken`` holds top-1 wrong at its adversarial inputs, what robust accuracy counts. A ``results.pt``
written when ``broken`` was still called ``success`` loads unchanged.
"""

import torch

from robustlab import ThreatModel
from robustlab.attacks import TopK
from robustlab.criteria import Misclassified, interest_class_rank
from robustlab.eval import Evaluator
from robustlab.eval.result import EvalResult


def test_broken_is_top1_wrong_and_criterion_is_the_attacks_success(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(40)
    result = Evaluator({"topk": TopK(k=3, steps=3)}, ThreatModel("linf", 0.08)).run(zoo_mlp, (x, y))
    top1_wrong = result.attacked["topk"] & (result.adv_logits["topk"].argmax(1) != y)
    assert torch.equal(result.broken["topk"], top1_wrong)
    out_of_top3 = result.attacked["topk"] & (interest_class_rank(result.adv_logits["topk"], y) > 3)
    assert torch.equal(result.criterion["topk"], out_of_top3)
    assert "broken" in result.to_state() and "success" not in result.to_state()


def test_a_results_file_saved_with_the_old_key_still_loads(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(20)
    result = Evaluator({"pgd": TopK(k=1, base="pgd", steps=2)}, ThreatModel("linf", 0.1)).run(zoo_mlp, (x, y))
    old = result.to_state()
    old["success"] = old.pop("broken")  # as results.pt files were written before the rename
    again = EvalResult.from_state(old)
    assert torch.equal(again.broken["pgd"], result.broken["pgd"]) and again.robust_accuracy == result.robust_accuracy


def test_a_nan_row_ranks_the_true_class_last_for_criteria_and_metrics_alike():
    logits = torch.tensor([[3.0, 2.0, 1.0], [float("nan"), 0.0, 0.0], [1.0, float("inf"), 0.0]])
    labels = torch.zeros(3, dtype=torch.long)
    assert interest_class_rank(logits, labels).tolist() == [1, 3, 3]
    assert Misclassified(k=2)(logits, labels).tolist() == [False, True, True]  # never "in the top k"
