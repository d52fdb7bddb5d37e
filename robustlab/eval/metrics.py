"""Metrics computed from logits: accuracy, interest class rank (ICR), top-k attack success rate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from robustlab.criteria import interest_class_rank as _rank

__all__ = ["default_topk", "icr_statistics", "interest_class_rank", "topk_metrics", "topk_report", "worst_case_rank"]


def interest_class_rank(logits: Tensor, labels: Tensor) -> Tensor:
    """Rank of the true class (1 = top); a row with a NaN or inf logit ranks it last (it is never "in the top k")."""
    return torch.where(torch.isfinite(logits).all(1), _rank(logits, labels), logits.shape[1])


def default_topk(num_classes: int) -> list[int]:
    """The top-k papers' k's: 1, 2, 3, 5 for 10-class data, 1, 5, 10 for more classes."""
    return [1, 2, 3, 5] if num_classes <= 10 else [1, 5, 10]


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
    """Per sample, the highest interest class rank over the clean logits and every attack's logits."""
    ranks = [interest_class_rank(result.clean_logits, result.labels)]
    ranks += [interest_class_rank(logits, result.labels) for logits in result.adv_logits.values()]
    return torch.stack(ranks).max(dim=0).values


def _rank_metrics(
    ranks: Tensor, clean_rank: Tensor, ks: Sequence[int], num_classes: int, attacked: Tensor
) -> dict[str, Any]:
    """Top-k ASR / robust / clean accuracy and ICR statistics from per-sample ranks after and before attacks.

    Only ``attacked`` samples count as top-k robust and in the ASR denominators: under AutoAttack's protocol a
    sample that was wrong but in the clean top k was never attacked, and counting it would dilute the ASR.
    """
    out: dict[str, Any] = {"asr": {}, "robust_accuracy": {}, "clean_accuracy": {}}
    for k in ks:
        in_topk = clean_rank <= k
        tried = in_topk & attacked
        out["asr"][str(k)] = (tried & (ranks > k)).sum().item() / max(1, tried.sum().item())
        out["robust_accuracy"][str(k)] = (tried & (ranks <= k)).float().mean().item()
        out["clean_accuracy"][str(k)] = in_topk.float().mean().item()
    out["icr"] = icr_statistics(ranks, num_classes)
    return out


def topk_report(result: Any, ks: Sequence[int] | None = None) -> dict[str, Any]:
    """Top-k ASR, top-k robust accuracy and ICR statistics of an :class:`~robustlab.eval.EvalResult`.

    When every attack ran on every sample (``only_robust=False``) each attack's statistics are its own
    (``scope="own"``, the top-k paper's protocol). Under AutoAttack's protocol a later attack only sees what
    the earlier ones left robust, so its statistics are cumulative (``scope="cumulative"``): per sample, the
    highest rank over the clean logits and this and all earlier attacks, matching the "robust accuracy after"
    columns. ``worst_case`` takes the highest rank over all attacks; its top-1 robust accuracy is the
    evaluator's worst-case robust accuracy.
    """
    num_classes = result.clean_logits.shape[1]
    ks = list(ks) if ks else default_topk(num_classes)
    clean_rank = interest_class_rank(result.clean_logits, result.labels)
    own = all(bool(a.all()) for a in result.attacked.values())
    out: dict[str, Any] = {"ks": ks, "scope": "own" if own else "cumulative", "attacks": {}}
    cumulative, tried = clean_rank, torch.zeros_like(result.clean_correct)
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
