"""Transfer evaluation: a surrogate x target matrix of top-k attack success rates.

Each attack crafts adversarial examples once per surrogate, through the one :class:`Evaluator` (so the
white-box numbers on the surrogate come with them); each target is then judged on those saved examples.
Every figure is :func:`~robustlab.eval.metrics.topk_metrics` of the target's logits, so the matrix can be
reproduced from the saved adversarial examples alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from robustlab.attacks.protocol import Attack, model_logits
from robustlab.errors import RobustlabError
from robustlab.eval.evaluator import Evaluator, top1_correct
from robustlab.eval.intervals import format_interval, interval
from robustlab.eval.metrics import default_topk, topk_metrics
from robustlab.io import markdown_table
from robustlab.plots import save_png, subplots
from robustlab.reports.kinds import Figure, from_fields, register_report
from robustlab.threat import ThreatModel

log = logging.getLogger(__name__)

WHITE_BOX = "white-box"


@register_report
@dataclass
class TransferResult:
    """Top-k metrics of every (attack, surrogate, target), the white-box metrics, and the crafted examples.

    ``transfer[attack][source][target]`` and ``white_box[attack][source]`` are :func:`topk_metrics` dicts
    (``asr``, ``robust_accuracy``, ``clean_accuracy`` per k, ``icr`` statistics), with k in ``ks`` plus
    every k of ``curve_ks`` (1 .. classes - 1) for the ASR-against-k curves.
    """

    kind: ClassVar[str] = "transfer"
    sources: list[str]
    targets: list[str]
    attacks: list[str]
    ks: list[int]
    threat: ThreatModel
    labels: Tensor
    num_classes: int
    clean_accuracy: dict[str, float] = field(default_factory=dict)
    white_box: dict[str, dict[str, dict]] = field(default_factory=dict)
    transfer: dict[str, dict[str, dict[str, dict]]] = field(default_factory=dict)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    passes: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # [attack][source]: crafting's passes
    x_adv: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # [attack][source] -> (N, ...)
    attack_configs: dict[str, dict] = field(default_factory=dict)
    dataset: str = "-"
    split: str = "-"
    files: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # a run's settings, wall time and environment (report.json)
    wall_time_s: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def curve_ks(self) -> list[int]:
        return list(range(1, self.num_classes))

    def asr(self, attack: str, source: str, target: str, k: int) -> float:
        """Top-k ASR of ``attack`` crafted on ``source`` and judged on ``target`` (``"white-box"``: the source)."""
        metrics = self.white_box[attack][source] if target == WHITE_BOX else self.transfer[attack][source][target]
        return metrics["asr"][str(k)]

    def matrix(self, attack: str, k: int) -> list[list[float]]:
        """Top-k ASR as rows = surrogates, columns = targets."""
        return [[self.asr(attack, s, t, k) for t in self.targets] for s in self.sources]

    def to_dict(self) -> dict[str, Any]:
        """Everything but the labels and the adversarial examples, as JSON-ready data."""
        return {
            "kind": self.kind,
            "dataset": self.dataset,
            "split": self.split,
            "n": self.n,
            "num_classes": self.num_classes,
            "threat": self.threat.to_dict(),
            "ks": self.ks,
            "sources": self.sources,
            "targets": self.targets,
            "attacks": {name: self.attack_configs.get(name, {}) for name in self.attacks},
            "clean_accuracy": self.clean_accuracy,
            "clean_accuracy_ci": {m: interval(a, self.n) for m, a in self.clean_accuracy.items()},  # 95 % exact
            "matrix": {
                a: {str(k): {"rows": self.sources, "columns": self.targets, "asr": self.matrix(a, k)} for k in self.ks}
                for a in self.attacks
            },
            "white_box": self.white_box,
            "transfer": self.transfer,
            "seconds": self.seconds,
            "passes": self.passes,
            "files": self.files,
            "config": self.config,
            "wall_time_s": self.wall_time_s,
            "environment": self.environment,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransferResult:
        """The result of a ``report.json`` (:meth:`to_dict`; the dataset of an older one from its config). It
        holds the sample count, not the labels or the crafted examples: the labels read back are -1 (one per
        sample), ``x_adv`` is empty."""
        config, t = d.get("config") or {}, d["threat"]
        return from_fields(
            cls, d, attacks=list(d["attacks"]), attack_configs=dict(d["attacks"]), ks=list(d["ks"]),
            threat=ThreatModel(t["norm"], t["eps"], tuple(t["bounds"])), labels=torch.full((d["n"],), -1),
            dataset=d.get("dataset", config.get("dataset", "-")), split=d.get("split", config.get("split", "-")),
        )  # fmt: skip

    def headline(self) -> dict[str, Figure]:
        """Each attack's top-1 ASR (the smallest k of the tables) from every surrogate on every target."""
        k = min(self.ks)
        return {f"{a} top-{k} ASR, {s} -> {t}": (self.asr(a, s, t, k), None)
                for a in self.attacks for s in self.sources for t in self.targets}  # fmt: skip

    def page_title(self) -> str:
        return f"Transfer of {', '.join(self.attacks)} from {', '.join(self.sources)}"

    def clean_table(self) -> str:
        """Clean accuracy of every surrogate and target."""
        rows = [[m, f"{format_interval(a, interval(a, self.n))} %"] for m, a in self.clean_accuracy.items()]
        return markdown_table(["model", "clean accuracy"], rows)

    def to_markdown(self) -> str:
        """``report.md``: the setting, the clean accuracies and :meth:`markdown`'s tables."""
        header = (
            f"# Transfer attacks on {self.dataset}/{self.split} (n = {self.n}), {self.threat.norm} "
            f"eps = {self.threat.eps:.4g}\n\nCells: top-k attack success rate (%) for k = "
            + ", ".join(map(str, self.ks))
            + "; rows craft (surrogates), columns judge (the white-box column is the surrogate itself).\n\n"
        )
        return header + self.clean_table() + "\n\n" + self.markdown() + self.cost_table()

    def cost_table(self) -> str:
        """Crafting's cost per attack and surrogate: images forward and input gradients backward on the surrogate
        (each target then judges every example with one forward pass)."""
        rows = [[a, s, self.seconds[a][s], p["forward_passes"], p["backward_passes"]]
                for a, by_source in self.passes.items() for s, p in by_source.items()]  # fmt: skip
        headers = ["attack", "surrogate", "seconds", "forward passes", "backward passes"]
        return "\n### Cost of crafting\n\n" + markdown_table(headers, rows) + "\n" if rows else ""

    def markdown(self) -> str:
        """Per attack, a surrogate x target table of top-k ASR (one ``a / b / c`` cell per pair), then ICRs."""
        ks_label = "/".join(str(k) for k in self.ks)
        parts = []
        for a in self.attacks:
            rows = []
            for s in self.sources:
                cells = [_cell(self.white_box[a][s], self.ks)]
                cells += [_cell(self.transfer[a][s][t], self.ks) for t in self.targets]
                rows.append([s, *cells])
            parts.append(f"### {a}: top-{ks_label} ASR (%)\n")
            parts.append(markdown_table(["surrogate \\ target", WHITE_BOX, *self.targets], rows) + "\n")
        icr_rows = []
        for a in self.attacks:
            for s in self.sources:
                for t, m in [(WHITE_BOX, self.white_box[a][s]), *[(t, self.transfer[a][s][t]) for t in self.targets]]:
                    icr_rows.append([a, s, t, f"{m['icr']['mean']:.2f}", f"{m['icr']['median']:.0f}"])
        parts.append("### Interest class rank of the true class after the attack\n")
        parts.append(markdown_table(["attack", "surrogate", "target", "mean ICR", "median ICR"], icr_rows) + "\n")
        return "\n".join(parts)


def _cell(metrics: dict, ks: Sequence[int]) -> str:
    return " / ".join(f"{100 * metrics['asr'][str(k)]:.1f}" for k in ks)


def as_tensors(data: Dataset | tuple[Tensor, Tensor], batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """A dataset (or an ``(x, y)`` pair) as two in-memory tensors."""
    if isinstance(data, tuple):
        return data
    xs, ys = zip(*DataLoader(data, batch_size=batch_size, shuffle=False))
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 256, device: torch.device | None = None) -> Tensor:
    """The model's logits on ``x``, in batches, returned on the CPU."""
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.cat(
        [model_logits(model, x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    )


def transfer_matrix(
    sources: Mapping[str, nn.Module],
    targets: Mapping[str, nn.Module],
    attacks: Mapping[str, Attack],
    threat: ThreatModel,
    data: Dataset | tuple[Tensor, Tensor],
    ks: Sequence[int] | None = None,
    batch_size: int = 256,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> TransferResult:
    """Craft every attack on every surrogate (white-box, via the evaluator), then judge every target on them.

    ``sources`` may hold an :class:`~robustlab.attacks.transfer.Ensemble`. Every attack runs on every sample
    (``only_robust=False``), so top-k ASR for every k is measured on the same examples.
    """
    if not sources or not targets or not attacks:
        raise RobustlabError("a transfer evaluation needs at least one surrogate, one target and one attack")
    x, y = as_tensors(data)
    target_clean = {name: predict_logits(m, x, batch_size, device) for name, m in targets.items()}
    num_classes = next(iter(target_clean.values())).shape[1]
    ks = list(ks or default_topk(num_classes))
    if any(int(k) != k or not 1 <= k < num_classes for k in ks):
        raise RobustlabError(f"top-k values {ks} must be whole numbers in 1..{num_classes - 1}")
    all_ks = sorted(set(ks) | set(range(1, num_classes)))
    result = TransferResult(list(sources), list(targets), list(attacks), ks, threat, y.cpu(), num_classes)
    jobs = [(a, s) for a in attacks for s in sources]
    if progress:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="crafting", unit="attack")
    for a, s in jobs:
        start = time.perf_counter()
        evaluator = Evaluator(
            {a: attacks[a]}, threat, batch_size=batch_size, only_robust=False, keep_adv=True, device=device
        )
        white = evaluator.run(sources[s], (x, y))
        result.clean_accuracy[s] = white.clean_accuracy
        result.white_box.setdefault(a, {})[s] = topk_metrics(
            white.adv_logits[a], white.labels, white.clean_logits, all_ks
        )
        result.x_adv.setdefault(a, {})[s] = white.x_adv
        result.seconds.setdefault(a, {})[s] = round(time.perf_counter() - start, 3)
        result.passes.setdefault(a, {})[s] = {"forward_passes": white.forward_passes[a] + white.clean_passes,
                                              "backward_passes": white.backward_passes[a]}  # fmt: skip
        result.attack_configs[a] = attacks[a].config() if hasattr(attacks[a], "config") else {}
        row = result.transfer.setdefault(a, {}).setdefault(s, {})
        for t, model in targets.items():
            adv_logits = predict_logits(model, white.x_adv, batch_size, device)
            row[t] = topk_metrics(adv_logits, result.labels, target_clean[t], all_ks)
        log.info("%s on %s: white-box top-1 ASR %.3f", a, s, result.white_box[a][s]["asr"]["1"])
    for t, logits in target_clean.items():
        result.clean_accuracy[t] = top1_correct(logits, result.labels).float().mean().item()
    return result


def plot_heatmaps(result: TransferResult, path: str | Path) -> None:
    """A PNG grid of heat maps: one per (attack, k), rows = surrogates, columns = targets, cells = top-k ASR."""
    rows, cols = len(result.attacks), len(result.ks)
    size = max(len(result.sources), len(result.targets))
    fig, axes = subplots(
        rows,
        cols,
        figsize=(2.5 + cols * (1.2 + 0.6 * size), 1.0 + rows * (1.6 + 0.5 * size)),
        squeeze=False,
        layout="constrained",
    )
    labels_t = [_short(t) for t in result.targets]
    labels_s = [_short(s) for s in result.sources]
    image = None
    for i, a in enumerate(result.attacks):
        for j, k in enumerate(result.ks):
            ax = axes[i][j]
            values = [[100 * v for v in row] for row in result.matrix(a, k)]
            image = ax.imshow(values, vmin=0, vmax=100, cmap="viridis")
            for r, row in enumerate(values):
                for c, v in enumerate(row):
                    color = "white" if v < 60 else "black"
                    ax.text(c, r, f"{v:.0f}", ha="center", va="center", color=color, fontsize=8)
            ax.set_title(f"{a}\ntop-{k}", fontsize=8)
            ax.set_xticks(range(len(labels_t)), labels_t, rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(len(labels_s)), labels_s if j == 0 else [""] * len(labels_s), fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="top-k ASR (%)")
    fig.suptitle(
        f"transfer top-k ASR (surrogate rows, target columns), {result.threat.norm} eps={result.threat.eps:.3g}"
    )
    save_png(fig, path, dpi=110, bbox_inches="tight")


def plot_topk_curves(result: TransferResult, path: str | Path) -> None:
    """A PNG of top-k ASR against k, one line per attack, one panel per (surrogate, white-box or target)."""
    from matplotlib.ticker import MaxNLocator

    columns = [WHITE_BOX, *result.targets]
    fig, axes = subplots(
        len(result.sources),
        len(columns),
        figsize=(3.2 * len(columns), 2.8 * len(result.sources)),
        squeeze=False,
        layout="constrained",
    )
    ks = result.curve_ks
    for i, s in enumerate(result.sources):
        for j, t in enumerate(columns):
            ax = axes[i][j]
            for a in result.attacks:
                ax.plot(ks, [100 * result.asr(a, s, t, k) for k in ks], marker="o", markersize=3, label=a)
            ax.set_title(f"{_short(s)} -> {_short(t) if t != WHITE_BOX else 'itself'}", fontsize=8)
            ax.set_ylim(0, 100)
            ax.set_xlabel("k", fontsize=8)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if j == 0:
                ax.set_ylabel("top-k ASR (%)", fontsize=8)
    axes[0][-1].legend(fontsize=7)
    save_png(fig, path, dpi=110, bbox_inches="tight")


def _short(name: str) -> str:
    return name.replace("zoo:", "")


__all__ = [
    "WHITE_BOX",
    "TransferResult",
    "as_tensors",
    "plot_heatmaps",
    "plot_topk_curves",
    "predict_logits",
    "transfer_matrix",
]
