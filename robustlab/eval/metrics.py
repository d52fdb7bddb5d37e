"""Metrics computed from logits: accuracy, interest class rank (ICR), top-k attack success rate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from robustlab.criteria import interest_class_rank
from robustlab.eval.intervals import clopper_pearson

__all__ = [
    "class_names",
    "default_topk",
    "icr_statistics",
    "interest_class_rank",
    "per_class",
    "topk_metrics",
    "topk_report",
    "worst_case_rank",
]

# Class names of the built-in datasets whose files carry none (torchvision datasets and image folders have .classes).
CLASS_NAMES = {
    "fashion-mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
    "mnist": [str(d) for d in range(10)],
    "svhn": [str(d) for d in range(10)],
}  # fmt: skip


def default_topk(num_classes: int) -> list[int]:
    """The top-k papers' k's: 1, 2, 3, 5 for 10-class data, 1, 5, 10 for more classes; only k below the number of
    classes (the true class is always in the top C, so top-C ASR is 0 by construction)."""
    ks = [1, 2, 3, 5] if num_classes <= 10 else [1, 5, 10]
    return [k for k in ks if k < num_classes] or [1]


def icr_statistics(ranks: Tensor, num_classes: int) -> dict[str, Any]:
    """Mean, median and histogram (counts for rank 1..num_classes) of interest class ranks."""
    ranks = ranks.long().cpu()
    if ranks.numel() == 0:
        return {"mean": float("nan"), "median": float("nan"), "histogram": [0] * num_classes}
    return {
        "mean": ranks.float().mean().item(),
        "median": ranks.float().median().item(),
        "histogram": torch.bincount(ranks - 1, minlength=num_classes)[:num_classes].tolist(),
    }


def topk_metrics(adv_logits: Tensor, labels: Tensor, clean_logits: Tensor, ks: Sequence[int]) -> dict[str, Any]:
    """Top-k ASR and top-k robust accuracy for each k, plus ICR statistics.

    Top-k ASR (untargeted) is the fraction of the samples whose true class was in the clean top k that the
    attack pushed out of the top k; top-k robust accuracy is the fraction of all samples whose true class is
    still in the top k after the attack.
    """
    adv_rank = interest_class_rank(adv_logits, labels)
    clean_rank = interest_class_rank(clean_logits, labels)
    return _rank_metrics(adv_rank, clean_rank, ks, adv_logits.shape[1], torch.ones_like(adv_rank, dtype=torch.bool))


def worst_case_rank(result: Any) -> Tensor:
    """Per sample, the highest interest class rank over the clean logits, every attack's logits and (nested eps) the
    example that broke it at a smaller eps."""
    ranks = [interest_class_rank(result.clean_logits, result.labels)]
    ranks += [interest_class_rank(logits, result.labels) for logits in result.adv_logits.values()]
    carried = getattr(result, "carried", None)
    if carried is not None:
        ranks.append(torch.where(carried, interest_class_rank(result.carried_logits, result.labels), 1))
    return torch.stack(ranks).max(dim=0).values


def _rank_metrics(
    ranks: Tensor, clean_rank: Tensor, ks: Sequence[int], num_classes: int, attacked: Tensor
) -> dict[str, Any]:
    """Top-k ASR / robust / clean accuracy and ICR statistics from per-sample ranks after and before attacks.

    Only ``attacked`` samples count as top-k robust and in the ASR denominators: under AutoAttack's protocol a
    sample that was wrong but in the clean top k was never attacked, and counting it would dilute the ASR.
    """
    out: dict[str, Any] = {"asr": {}, "robust_accuracy": {}, "clean_accuracy": {}}
    intervals: dict[str, Any] = {"n": len(ranks), "asr_n": {}, "asr": {}, "robust_accuracy": {}, "clean_accuracy": {}}
    for k in ks:
        in_topk = clean_rank <= k
        tried = in_topk & attacked
        pushed, kept = int((tried & (ranks > k)).sum()), int((tried & (ranks <= k)).sum())
        out["asr"][str(k)] = pushed / max(1, int(tried.sum()))
        out["robust_accuracy"][str(k)] = (tried & (ranks <= k)).float().mean().item()
        out["clean_accuracy"][str(k)] = in_topk.float().mean().item()
        intervals["asr_n"][str(k)] = int(tried.sum())
        intervals["asr"][str(k)] = list(clopper_pearson(pushed, int(tried.sum())))
        intervals["robust_accuracy"][str(k)] = list(clopper_pearson(kept, len(ranks)))
        intervals["clean_accuracy"][str(k)] = list(clopper_pearson(int(in_topk.sum()), len(ranks)))
    out["icr"] = icr_statistics(ranks, num_classes)
    out["intervals"] = intervals  # 95 % Clopper-Pearson of every rate above, with its n
    return out


def topk_report(result: Any, ks: Sequence[int] | None = None) -> dict[str, Any]:
    """Top-k ASR, top-k robust accuracy and ICR statistics of an :class:`~robustlab.eval.EvalResult`.

    When every attack ran on every sample (``only_robust=False``) each attack's statistics are its own
    (``scope="own"``, the top-k paper's protocol). Under AutoAttack's protocol a later attack only sees what
    the earlier ones left robust, so its statistics are cumulative (``scope="cumulative"``): per sample, the
    highest rank over the clean logits and this and all earlier attacks, matching the "robust accuracy after"
    columns. With nested eps a sample broken at a smaller eps starts from the rank at the example that broke it
    there (that example lies in this ball too), so no cumulative row is below the worst case at any k.
    ``worst_case`` takes the highest rank over all attacks; its top-1 robust accuracy is the evaluator's
    worst-case robust accuracy.
    """
    num_classes = result.clean_logits.shape[1]
    ks = list(ks) if ks else default_topk(num_classes)
    clean_rank = interest_class_rank(result.clean_logits, result.labels)
    carried = getattr(result, "carried", None)
    own = all(bool(a.all()) for a in result.attacked.values()) and carried is None
    out: dict[str, Any] = {"ks": ks, "scope": "own" if own else "cumulative", "attacks": {}}
    cumulative, tried = clean_rank, torch.zeros_like(result.clean_correct)
    if carried is not None:  # broken at a smaller eps: its example there (in this ball too) counts from the start
        carried_rank = interest_class_rank(result.carried_logits, result.labels)
        cumulative = torch.maximum(cumulative, torch.where(carried, carried_rank, 1))
        tried = tried | carried
    for name, logits in result.adv_logits.items():
        rank = interest_class_rank(logits, result.labels)
        cumulative = torch.maximum(cumulative, rank)
        tried = tried | result.attacked[name]
        stats = _rank_metrics(rank if own else cumulative, clean_rank, ks, num_classes, tried)
        stats["scope"] = out["scope"]
        stats["attacked"] = int(result.attacked[name].sum().item())
        out["attacks"][name] = stats
    out["worst_case"] = _rank_metrics(worst_case_rank(result), clean_rank, ks, num_classes, tried)
    return out


def per_class(labels: Tensor, clean_correct: Tensor, robust: Tensor, num_classes: int) -> dict[str, list[int]]:
    """Per class: samples, clean-correct and robust counts (each list sums to the overall count)."""
    labels = labels.long().cpu()
    return {
        name: torch.bincount(labels, weights=None if flags is None else flags.cpu().double(), minlength=num_classes)
        .round()
        .long()
        .tolist()
        for name, flags in (("n", None), ("clean_correct", clean_correct), ("robust", robust))
    }


def class_names(data: Any, dataset_name: str | None, num_classes: int) -> list[str]:
    """The dataset's class names (``.classes`` of torchvision datasets, a table for the idx datasets), else
    ``"0"``, ``"1"``, ..."""
    inner = data
    while inner is not None and not hasattr(inner, "classes") and hasattr(inner, "dataset"):
        inner = inner.dataset  # a Subset
    names = getattr(inner, "classes", None)
    if names is None and dataset_name is not None:
        names = CLASS_NAMES.get(dataset_name.lower())
    if names is None or len(names) != num_classes:
        return [str(c) for c in range(num_classes)]
    return [str(n) for n in names]
