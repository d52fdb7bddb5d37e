"""After training: the final evaluation through the evaluator, report.json / report.md and the curves PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from robustlab.attacks.presets import PGD
from robustlab.eval import Evaluator
from robustlab.io import atomic_write_bytes, markdown_table, write_json
from robustlab.plots import save_png, subplots
from robustlab.threat import ThreatModel


def final_evaluation(
    model: nn.Module,
    test_set: Dataset,
    threat: ThreatModel,
    autoattack: bool | str = False,
    pgd_steps: int = 50,
    pgd_restarts: int = 10,
    batch_size: int = 500,
    seed: int = 0,
    device: torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Clean and PGD-``steps``-``restarts`` accuracy (and AutoAttack's, run on what PGD left robust, so it is
    the per-sample worst case of both) through :class:`robustlab.eval.Evaluator`. ``autoattack`` may be an
    attack spec such as ``"autoattack:apgd-ce,apgd-t"`` (``True``: the standard version)."""
    name = f"pgd-{pgd_steps}-{pgd_restarts}"
    attacks: dict[str, Any] = {name: PGD(steps=pgd_steps, restarts=pgd_restarts, seed=seed)}
    if autoattack:
        from robustlab.attacks.registry import attack_from_spec

        spec = autoattack if isinstance(autoattack, str) else "autoattack"
        attacks["autoattack"] = attack_from_spec(spec, seed=seed)
    model.eval()
    result = Evaluator(attacks, threat, batch_size=batch_size, progress=progress, device=device).run(model, test_set)
    summary = result.summary()
    out = {
        "n": summary["n"],
        "clean_accuracy": summary["clean_accuracy"],
        "pgd_accuracy": summary["attacks"][name]["robust_accuracy_after"],
        "pgd_attack": name,
        "robust_accuracy": summary["robust_accuracy"],
        "attacks": summary["attacks"],
        "threat": threat.to_dict(),
    }
    if autoattack:
        out["autoattack_spec"] = attacks["autoattack"].spec
        out["autoattack_accuracy"] = summary["attacks"]["autoattack"]["robust_accuracy_after"]
    return out


def plot_curves(history: list[dict[str, float]], path: str | os.PathLike, title: str = "") -> None:
    """Clean / FGSM / PGD accuracy of the monitor batch and the training loss per epoch, as a PNG."""
    epochs = [h["epoch"] for h in history]
    fig, (ax, ax_loss) = subplots(1, 2, figsize=(10, 3.6))
    for key, label in [
        ("monitor_clean_acc", "clean"),
        ("monitor_fgsm_acc", "FGSM"),
        ("monitor_pgd_acc", "PGD"),
        ("train_acc", "training input"),
    ]:
        if any(key in h for h in history):
            ax.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=label)
    for h in history:
        if h.get("co"):
            ax.axvline(h["epoch"], color="red", alpha=0.3, lw=6)
    ax.set(xlabel="epoch", ylabel="accuracy (monitor batch)", ylim=(0, 1), title=title or "accuracy")
    ax.legend(fontsize=8)
    ax_loss.plot(epochs, [h.get("loss", float("nan")) for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def evaluation_rows(evaluation: dict[str, Any] | None) -> list[list[str]]:
    """Table rows (metric, value) of a :func:`final_evaluation` result, for the training CLIs' summaries."""
    if not evaluation:
        return []
    rows = [
        ["clean accuracy", f"{100 * evaluation['clean_accuracy']:.2f} %"],
        [f"{evaluation['pgd_attack']} accuracy", f"{100 * evaluation['pgd_accuracy']:.2f} %"],
    ]
    if "autoattack_accuracy" in evaluation:
        rows.append(["autoattack accuracy", f"{100 * evaluation['autoattack_accuracy']:.2f} %"])
    return rows


def write_report(out_dir: str | os.PathLike, report: dict[str, Any]) -> None:
    """``report.json`` and a short ``report.md`` (results table, then the per-epoch history)."""
    out = Path(out_dir)
    write_json(out / "report.json", report)
    ev = report.get("evaluation") or {}
    rows = [
        ["clean accuracy", _pct(ev.get("clean_accuracy"))],
        [ev.get("pgd_attack", "pgd"), _pct(ev.get("pgd_accuracy"))],
    ]
    if "autoattack_accuracy" in ev:
        rows.append(["autoattack (after PGD)", _pct(ev["autoattack_accuracy"])])
    rows += [
        ["test samples", ev.get("n", "-")],
        ["epochs run", report["epochs_done"]],
        ["training time", f"{report['train_seconds']:.1f} s"],
        ["stopped", report.get("stop_reason") or "no"],
        ["CO events", len(report.get("co_events", []))],
    ]
    keys = ["epoch", "loss", "train_acc", "monitor_clean_acc", "monitor_fgsm_acc", "monitor_pgd_acc", "co"]
    keys = [k for k in keys if any(k in h for h in report["history"])]
    hist = [[_fmt(h.get(k)) for k in keys] for h in report["history"]]
    text = (
        f"# {report['method']['method']} training\n\n"
        + markdown_table(["metric", "value"], rows)
        + "\n\n## History\n\n"
        + markdown_table(keys, hist)
        + "\n"
    )
    atomic_write_bytes(out / "report.md", text.encode())


def _pct(v: Any) -> str:
    return f"{100 * v:.2f} %" if isinstance(v, float) else "-"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
