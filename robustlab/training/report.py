"""After training: the final evaluation through the evaluator, the typed training report (JSON, Markdown, curves)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from robustlab.io import markdown_table, write_report
from robustlab.models.mode import temporary_mode
from robustlab.reports.html import write_html
from robustlab.threat import ThreatModel


@dataclass
class FinalEvaluation:
    """What a run is evaluated on once trained: clean and PGD-``pgd_steps``-``pgd_restarts`` accuracy (and
    AutoAttack's on what PGD left robust) through :class:`robustlab.eval.Evaluator`."""

    test_set: Dataset | tuple[torch.Tensor, torch.Tensor]
    threat: ThreatModel
    autoattack: bool | str = False  # True: the standard version; or a spec such as "autoattack:apgd-ce,apgd-t"
    pgd_steps: int = 50
    pgd_restarts: int = 10
    batch_size: int = 500
    seed: int = 0
    progress: bool = False

    def run(self, model: nn.Module, device: torch.device | None = None) -> dict[str, Any]:
        return final_evaluation(
            model, self.test_set, self.threat, self.autoattack, self.pgd_steps, self.pgd_restarts, self.batch_size,
            self.seed, device, self.progress,
        )  # fmt: skip


def final_evaluation(
    model: nn.Module,
    test_set: Dataset | tuple[torch.Tensor, torch.Tensor],
    threat: ThreatModel,
    autoattack: bool | str = False,
    pgd_steps: int = 50,
    pgd_restarts: int = 10,
    batch_size: int = 500,
    seed: int = 0,
    device: torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Clean and PGD accuracy (and AutoAttack's, run on what PGD left robust: the per-sample worst case of both)
    through :class:`robustlab.eval.Evaluator`; the model is evaluated in eval mode and left in its own mode."""
    from robustlab.attacks.presets import PGD
    from robustlab.eval import Evaluator

    name = f"pgd-{pgd_steps}-{pgd_restarts}"
    attacks: dict[str, Any] = {name: PGD(steps=pgd_steps, restarts=pgd_restarts, seed=seed, early_stop=True)}
    if autoattack:
        from robustlab.attacks.registry import attack_from_spec

        attacks["autoattack"] = attack_from_spec(autoattack if isinstance(autoattack, str) else "autoattack", seed=seed)
    with temporary_mode(model, training=False):
        title = f"final evaluation ({' then '.join(attacks)})" if progress else False  # its own bar, its cost seen
        evaluator = Evaluator(attacks, threat, batch_size=batch_size, progress=title, device=device)
        summary = evaluator.run(model, test_set).summary()
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


def evaluation_rows(evaluation: dict[str, Any] | None) -> list[list[str]]:
    """Table rows (metric, value) of a :func:`final_evaluation` result."""
    if not evaluation:
        return []
    rows = [
        ["clean accuracy", f"{100 * evaluation['clean_accuracy']:.2f} %"],
        [f"{evaluation['pgd_attack']} accuracy", f"{100 * evaluation['pgd_accuracy']:.2f} %"],
    ]
    if "autoattack_accuracy" in evaluation:
        rows.append(["autoattack accuracy", f"{100 * evaluation['autoattack_accuracy']:.2f} %"])
    return rows


def plot_curves(history: list[dict[str, float]], path: str | os.PathLike, title: str = "") -> None:
    """Clean / FGSM / PGD accuracy of the monitor batch and the training loss per epoch, as a PNG."""
    from matplotlib.ticker import MaxNLocator

    from robustlab.plots import save_png, subplots

    epochs = [h["epoch"] for h in history]
    fig, (ax, ax_loss) = subplots(1, 2, figsize=(10, 3.6))
    for key, label in [("monitor_clean_acc", "clean"), ("monitor_fgsm_acc", "FGSM"), ("monitor_pgd_acc", "PGD"),
                       ("train_acc", "training input")]:  # fmt: skip
        if any(key in h for h in history):
            ax.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=label)
    for h in history:
        if h.get("co"):
            ax.axvline(h["epoch"], color="red", alpha=0.3, lw=6)
    ax.set(xlabel="epoch", ylabel="accuracy (monitor batch)", ylim=(0, 1), title=title or "accuracy")
    ax.legend(fontsize=8)
    ax_loss.plot(epochs, [h.get("loss", float("nan")) for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    for axis in (ax, ax_loss):  # epochs are whole numbers: no 1.0, 1.2, ... ticks
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    save_png(fig, path, dpi=100)


HISTORY_KEYS = ("epoch", "loss", "train_acc", "monitor_clean_acc", "monitor_fgsm_acc", "monitor_pgd_acc", "co")


@dataclass
class TrainReport:
    """What a training run did and how the trained model scored: renders itself to JSON and Markdown."""

    kind: str  # the command that trained: train, ssl, deacl, pseudo-at, finetune
    method: dict[str, Any]
    config: dict[str, Any]
    history: list[dict[str, float]]
    epochs_done: int
    best_epoch: int | None
    stop_reason: str | None
    train_seconds: float
    evaluation: dict[str, Any] | None = None
    summary_keys: tuple[str, ...] = ()  # the last epoch's stats worth a summary row (e.g. knn_accuracy)
    extra: dict[str, Any] = field(default_factory=dict)  # dataset, model, train_samples, co_events, settings, ...

    def to_dict(self) -> dict[str, Any]:
        mean_epoch = sum(h["epoch_seconds"] for h in self.history) / max(len(self.history), 1)
        return {
            "kind": self.kind, "method": self.method, "config": self.config, "evaluation": self.evaluation,
            "epochs_done": self.epochs_done, "best_epoch": self.best_epoch, "stop_reason": self.stop_reason,
            "train_seconds": self.train_seconds, "epoch_seconds_mean": mean_epoch, "history": self.history,
            **self.extra,
        }  # fmt: skip

    def summary_rows(self) -> list[list[str]]:
        """The rows of the summary table the CLI prints."""
        last = self.history[-1] if self.history else {}
        from robustlab.eval.progress import plural

        rows = [["training time", f"{self.train_seconds:.1f} s ({plural(self.epochs_done, 'epoch')})"]]
        if self.kind == "train":
            rows.append(["stopped early", self.stop_reason or "no"])
            co = len(self.extra.get("co_events", []))
            rows.append(["CO detected", plural(co, "time") if co else "no"])
        show = lambda k, v: f"{100 * v:.2f} %" if "accuracy" in k else f"{v:.4f}"  # noqa: E731
        rows += [[k.replace("_", " "), show(k, last[k])] for k in self.summary_keys if k in last]
        return rows + evaluation_rows(self.evaluation)

    def markdown(self) -> str:
        """A results table, then the per-epoch history."""
        ev = self.evaluation or {}
        pct = lambda v: f"{100 * v:.2f} %" if isinstance(v, float) else "-"  # noqa: E731
        rows = [
            ["clean accuracy", pct(ev.get("clean_accuracy"))],
            [ev.get("pgd_attack", "pgd"), pct(ev.get("pgd_accuracy"))],
        ]
        if "autoattack_accuracy" in ev:
            rows.append(["autoattack (after PGD)", pct(ev["autoattack_accuracy"])])
        rows += [["test samples", ev.get("n", "-")], ["epochs run", self.epochs_done],
                 ["training time", f"{self.train_seconds:.1f} s"], ["stopped", self.stop_reason or "no"],
                 ["CO events", len(self.extra.get("co_events", []))]]  # fmt: skip
        keys = [k for k in (*HISTORY_KEYS, *self.summary_keys) if any(k in h for h in self.history)]
        fmt = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
        history = [[fmt(h.get(k)) for k in keys] for h in self.history]
        title = f"# {self.method.get('method', self.kind)} training\n\n"
        return (
            title
            + markdown_table(["metric", "value"], rows)
            + "\n\n## History\n\n"
            + markdown_table(keys, history)
            + "\n"
        )

    def write(self, out: str | os.PathLike) -> dict[str, str]:
        """``OUT/report.json`` and ``OUT/report.md`` through robustlab's one report writer, and ``report.html``."""
        files = write_report(Path(out), self.to_dict(), self.markdown())
        return {**files, "html": write_html(out)}


__all__ = ["FinalEvaluation", "TrainReport", "evaluation_rows", "final_evaluation", "plot_curves"]
