"""After training: the final evaluation through the evaluator (an :class:`~robustlab.eval.EvalReport`), the typed
training report (JSON, Markdown, curves)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from robustlab.eval.entries import AttackStats, EpsEntry, TopKStats
from robustlab.eval.intervals import clopper_pearson
from robustlab.eval.report import EvalReport
from robustlab.io import markdown_table, write_report
from robustlab.models.mode import temporary_mode
from robustlab.reports.html import write_html
from robustlab.reports.kinds import Figure, from_fields, register_report
from robustlab.threat import ThreatModel

TRAINING_KINDS = ("train", "ssl", "deacl", "pseudo-at", "finetune")  # the commands; a training report's kind


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

    def run(self, model: nn.Module, device: torch.device | None = None) -> EvalReport:
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
) -> EvalReport:
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
        result = evaluator.run(model, test_set)
    configs = {n: a.config() for n, a in attacks.items()}
    return EvalReport(
        model=type(model).__name__, dataset="-", split="-", n=result.n, norm=threat.norm, bounds=tuple(threat.bounds),
        eps=[threat.eps], only_robust=True, attacks=configs,
        seeds={"seed": seed, "attacks": {n: c.get("seed") for n, c in configs.items()}},
        results=[EpsEntry.from_result(threat.eps, result)],
        config={"pgd_steps": pgd_steps, "pgd_restarts": pgd_restarts, "batch_size": batch_size, "seed": seed,
                "autoattack": attacks["autoattack"].spec if autoattack else False},
    )  # fmt: skip


SUMMARY_STATS = ("robust_accuracy_after", "attacked", "broken", "seconds", "forward_passes", "backward_passes")


def evaluation_summary(evaluation: EvalReport) -> dict[str, Any]:
    """The final evaluation's figures as training reports have always stored them (report.json's ``evaluation``):
    n, clean, PGD and AutoAttack accuracy, each attack's statistics and the threat."""
    entry = evaluation.results[0]
    pgd = next(iter(entry.attacks))
    out = {
        "n": entry.n,
        "clean_accuracy": entry.clean_accuracy,
        "pgd_accuracy": entry.attacks[pgd].robust_accuracy_after,
        "pgd_attack": pgd,
        "robust_accuracy": entry.robust_accuracy,
        "attacks": {a: {k: s.to_dict()[k] for k in SUMMARY_STATS} for a, s in entry.attacks.items()},
        "threat": {"norm": evaluation.norm, "eps": entry.eps, "bounds": list(evaluation.bounds)},
    }
    if "autoattack" in entry.attacks:
        out["autoattack_spec"] = evaluation.config.get("autoattack")
        out["autoattack_accuracy"] = entry.attacks["autoattack"].robust_accuracy_after
    return out


def evaluation_from_summary(s: dict[str, Any]) -> EvalReport:
    """The final evaluation of a training report.json written before it was an :class:`EvalReport` (a summary
    dict: n, clean, PGD and AutoAttack accuracy): what it holds, with intervals over its n, no top-k statistics."""
    n, threat, none = s["n"], s["threat"], TopKStats({}, {}, {}, {})
    ci = lambda v: list(clopper_pearson(round(v * n), n))  # noqa: E731
    saved = s.get("attacks") or {s.get("pgd_attack", "pgd"): {"robust_accuracy_after": s["pgd_accuracy"]},
                                 **({"autoattack": {"robust_accuracy_after": s["autoattack_accuracy"]}}
                                    if "autoattack_accuracy" in s else {})}  # fmt: skip
    attacks = {name: AttackStats(a["robust_accuracy_after"], a.get("attacked", 0), a.get("broken", 0),
                                 a.get("seconds", 0.0), none, None, ci(a["robust_accuracy_after"]),
                                 a.get("forward_passes", 0), a.get("backward_passes", 0))
               for name, a in saved.items()}  # fmt: skip
    clean = s["clean_accuracy"]
    robust = s.get("robust_accuracy", min(a.robust_accuracy_after for a in attacks.values()))
    entry = EpsEntry(threat["eps"], n, clean, robust, (clean - robust) / clean if clean else 0.0, attacks, none, [],
                     "cumulative", intervals={"clean_accuracy": ci(clean), "robust_accuracy": ci(robust)})  # fmt: skip
    return EvalReport("-", "-", "-", n, threat.get("norm", "-"), tuple(threat.get("bounds", (0.0, 1.0))),
                      [threat["eps"]], True, {a: {} for a in attacks}, {}, [entry],
                      config={"autoattack": s.get("autoattack_spec", False)})  # fmt: skip


def evaluation_rows(evaluation: EvalReport | None) -> list[list[str]]:
    """Table rows (metric, value) of a :func:`final_evaluation` report."""
    if evaluation is None:
        return []
    s = evaluation_summary(evaluation)
    rows = [
        ["clean accuracy", f"{100 * s['clean_accuracy']:.2f} %"],
        [f"{s['pgd_attack']} accuracy", f"{100 * s['pgd_accuracy']:.2f} %"],
    ]
    if "autoattack_accuracy" in s:
        rows.append(["autoattack accuracy", f"{100 * s['autoattack_accuracy']:.2f} %"])
    return rows


def plot_curves(history: list[dict[str, float]], path: str | os.PathLike, title: str = "") -> None:
    """Clean / FGSM / PGD accuracy of the monitor batch and the training loss per epoch, as a PNG."""
    from matplotlib.ticker import MaxNLocator

    from robustlab.plots import save_png, subplots

    epochs = [h["epoch"] for h in history]
    fig, (ax, ax_loss) = subplots(1, 2, figsize=(10, 3.6))
    for key, label in [("monitor_clean_acc", "clean"), ("monitor_fgsm_acc", "FGSM"), ("monitor_pgd_acc", "PGD"),
                       ("accuracy", "training input"), ("train_acc", "training input")]:  # train_acc: before 0.2
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


# the accuracy on the training input is "accuracy" (a history written before 0.2 calls it "train_acc")
HISTORY_KEYS = ("epoch", "loss", "accuracy", "train_acc", "monitor_clean_acc", "monitor_fgsm_acc", "monitor_pgd_acc",
                "co")  # fmt: skip


@dataclass
class TrainReport:
    """What a training run did and how the trained model scored: renders itself to JSON and Markdown."""

    kind: str  # the command that trained (one of TRAINING_KINDS), stored as report.json's kind
    method: dict[str, Any]
    config: dict[str, Any]
    history: list[dict[str, float]]
    epochs_done: int
    best_epoch: int | None
    stop_reason: str | None
    train_seconds: float
    evaluation: EvalReport | None = None  # the final evaluation
    summary_keys: tuple[str, ...] = ()  # the last epoch's stats worth a summary row (e.g. knn_accuracy)
    extra: dict[str, Any] = field(default_factory=dict)  # dataset, model, train_samples, co_events, settings, ...

    def to_dict(self) -> dict[str, Any]:
        """report.json: the fields, the final evaluation in full (``final_evaluation``) and as the summary
        training reports have always had (``evaluation``), and ``extra``'s keys at the top level."""
        mean_epoch = sum(h["epoch_seconds"] for h in self.history) / max(len(self.history), 1)
        ev = self.evaluation
        return {
            "kind": self.kind, "method": self.method, "config": self.config,
            "evaluation": None if ev is None else evaluation_summary(ev),
            "final_evaluation": None if ev is None else ev.to_dict(),
            "epochs_done": self.epochs_done, "best_epoch": self.best_epoch, "stop_reason": self.stop_reason,
            "train_seconds": self.train_seconds, "epoch_seconds_mean": mean_epoch, "history": self.history,
            "summary_keys": list(self.summary_keys), **self.extra,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainReport:
        """The report of a ``report.json`` (:meth:`to_dict`, or an older one: its final evaluation a summary dict,
        no summary keys); keys that are no field go back into ``extra``."""
        derived = {"evaluation", "final_evaluation", "epoch_seconds_mean", "summary_keys", "extra"}
        names = {f.name for f in fields(cls)} | derived
        full, summary = d.get("final_evaluation"), d.get("evaluation")
        evaluation = EvalReport.from_dict(full) if full else evaluation_from_summary(summary) if summary else None
        return from_fields(
            cls, d, kind=d.get("kind", "train"), method=d.get("method") or {}, config=d.get("config") or {},
            best_epoch=d.get("best_epoch"), stop_reason=d.get("stop_reason"), train_seconds=d.get("train_seconds", 0.0),
            evaluation=evaluation, summary_keys=tuple(d.get("summary_keys", ())),
            extra={k: v for k, v in d.items() if k not in names},
        )  # fmt: skip

    @property
    def n(self) -> int | None:
        """The samples of the final evaluation (None: none ran)."""
        return None if self.evaluation is None else self.evaluation.n

    def headline(self) -> dict[str, Figure]:
        """The final evaluation's clean, PGD and AutoAttack accuracy (with 95 % intervals) and a last epoch's kNN
        accuracy."""
        figures: dict[str, Figure] = {}
        if self.evaluation is not None:
            entry = self.evaluation.results[0]
            pgd, where = next(iter(entry.attacks)), f", {self.evaluation.norm} eps {entry.eps:.4g}"
            figures["clean accuracy"] = (entry.clean_accuracy, entry.intervals.get("clean_accuracy"))
            for name, label in ((pgd, pgd), ("autoattack", "PGD + AutoAttack")):
                if name in entry.attacks:
                    stats = entry.attacks[name]
                    figures[f"robust accuracy under {label}{where}"] = (
                        stats.robust_accuracy_after, stats.robust_accuracy_after_ci)  # fmt: skip
        last = self.history[-1] if self.history else {}
        if "knn_accuracy" in last:
            figures["kNN accuracy (last epoch)"] = (last["knn_accuracy"], None)
        return figures

    def page_title(self) -> str:
        return f"Training: robustlab {self.kind} ({self.method.get('method', self.kind)})"

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

    def to_markdown(self) -> str:
        """A results table, then the per-epoch history."""
        ev = {} if self.evaluation is None else evaluation_summary(self.evaluation)
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
        files = write_report(Path(out), self.to_dict(), self.to_markdown())
        return {**files, "html": write_html(out)}


register_report(TrainReport, *TRAINING_KINDS)

__all__ = [
    "TRAINING_KINDS",
    "FinalEvaluation",
    "TrainReport",
    "evaluation_from_summary",
    "evaluation_rows",
    "evaluation_summary",
    "final_evaluation",
    "plot_curves",
]
