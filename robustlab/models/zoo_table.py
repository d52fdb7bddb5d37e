"""The embedded zoo as a table: each model with its architecture, dataset, training and recorded clean and robust
accuracy in a few words (what ``robustlab zoo`` prints)."""

from __future__ import annotations

from typing import Any

from robustlab.io import markdown_table
from robustlab.models.loader import zoo_index

COLUMNS = ["model", "arch", "dataset", "clean", "robust", "training"]


def zoo_table() -> str:
    """The zoo's models, sorted by name, as a Markdown table of :data:`COLUMNS`."""
    rows = [
        [f"zoo:{name}", meta["arch"], meta["dataset"], _percent(meta.get("test_accuracy")), robust_figure(meta),
         meta.get("training", "-")]
        for name, meta in sorted(zoo_index().items())
    ]  # fmt: skip
    return markdown_table(COLUMNS, rows)


def _percent(value: Any) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def robust_figure(meta: dict[str, Any]) -> str:
    """The recorded robust accuracy in a few words (attack, norm, eps, n), or '-' (also for a figure recorded
    without its attack, norm, eps or n)."""
    try:
        return _robust_figure(meta)
    except (KeyError, TypeError, ValueError):
        return "-"


def _robust_figure(meta: dict[str, Any]) -> str:
    robust, other = meta.get("robust_accuracy"), meta.get("robustness")
    if isinstance(robust, dict):
        text = f"{100 * robust['value']:.1f} % ({robust['attack']}, {robust['norm']} {robust['eps']}, n={robust['n']})"
        aa = meta.get("autoattack")
        return text + (f"; {100 * aa['robust_accuracy']:.1f} % after AutoAttack" if isinstance(aa, dict) else "")
    if isinstance(other, dict) and "autoattack_accuracy" in other:
        attack = "APGD-CE + APGD-T after PGD-10"  # zoo.json names the reduced AutoAttack it ran
        return f"{100 * other['autoattack_accuracy']:.1f} % ({attack}, eps {other['eps']}, n={other['eval_n']})"
    return "-"


__all__ = ["COLUMNS", "robust_figure", "zoo_table"]
