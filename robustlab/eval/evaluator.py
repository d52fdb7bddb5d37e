"""The one robust-accuracy evaluator: clean correctness, then each attack on what is still robust.

AutoAttack's semantics: a sample counts as robust only if it is classified correctly and no attack in the
list succeeds on it; each attack runs only on the samples still robust after the previous ones, so the
final figure is the per-sample worst case over the attacks, as a fraction of all samples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from robustlab.attacks.protocol import Attack, check_labels, model_logits
from robustlab.distributed import Shard, gather_to_main
from robustlab.errors import CheckpointError, RobustlabError
from robustlab.eval.metrics import interest_class_rank
from robustlab.io import atomic_torch_save, safe_load
from robustlab.threat import ThreatModel

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Per-sample outcome of an evaluation; every figure in a report is derived from these tensors."""

    labels: Tensor  # (N,)
    clean_logits: Tensor  # (N, C)
    clean_correct: Tensor  # bool (N,)
    attacked: dict[str, Tensor] = field(default_factory=dict)  # bool (N,): the attack ran on the sample
    success: dict[str, Tensor] = field(default_factory=dict)  # bool (N,): top-1 wrong at the attack's x_adv
    criterion: dict[str, Tensor] = field(default_factory=dict)  # bool (N,): the attack's own criterion held
    adv_logits: dict[str, Tensor] = field(default_factory=dict)  # (N, C): logits at the attack's x_adv
    robust_after: dict[str, Tensor] = field(default_factory=dict)  # bool (N,): still robust after it
    seconds: dict[str, float] = field(default_factory=dict)
    x_adv: Tensor | None = None  # (N, ...): the worst-case adversarial input per sample, if kept

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def nonfinite(self) -> Tensor:
        """Per sample: the clean logits or some attack's logits hold NaN or inf (never correct, never robust)."""
        flags = ~torch.isfinite(self.clean_logits).all(1)
        for logits in self.adv_logits.values():
            flags |= ~torch.isfinite(logits).all(1)
        return flags

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct.float().mean().item()

    @property
    def robust(self) -> Tensor:
        """Per-sample worst case: correct and not broken by any attack."""
        flags = self.clean_correct.clone()
        for success in self.success.values():
            flags &= ~success
        return flags

    @property
    def robust_accuracy(self) -> float:
        return self.robust.float().mean().item()

    def attack_success_rate(self) -> float:
        """Fraction of the clean-correct samples that some attack broke."""
        correct = self.clean_correct.sum().item()
        return (self.clean_correct & ~self.robust).sum().item() / correct if correct else 0.0

    def interest_class_rank(self, name: str) -> Tensor:
        """Per-sample rank of the true class at the attack's adversarial inputs (1 = top)."""
        return interest_class_rank(self.adv_logits[name], self.labels)

    def to_state(self) -> dict[str, Any]:
        """Plain tensors and numbers (for ``torch.save``/``torch.load(weights_only=True)``)."""
        state = {k: getattr(self, k) for k in ("labels", "clean_logits", "clean_correct", "x_adv")}
        for k in ("attacked", "success", "criterion", "adv_logits", "robust_after", "seconds"):
            state[k] = dict(getattr(self, k))
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> EvalResult:
        """Inverse of :meth:`to_state`."""
        return cls(**{k: state[k] for k in cls.__dataclass_fields__ if k in state})

    def summary(self) -> dict[str, Any]:
        """The headline numbers, cumulative per attack as in AutoAttack's log."""
        return {
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "attack_success_rate": self.attack_success_rate(),
            "nonfinite": self.nonfinite.nonzero().squeeze(1).tolist(),
            "attacks": {
                name: {
                    "robust_accuracy_after": self.robust_after[name].float().mean().item(),
                    "attacked": int(self.attacked[name].sum().item()),
                    "broken": int(self.success[name].sum().item()),
                    "seconds": round(self.seconds[name], 4),
                }
                for name in self.success
            },
        }


class Evaluator:
    """Runs attacks at one threat model over a dataset or a batch, attacking only what is still robust.

    Args:
        attacks: ``{name: attack}`` (or a list, named by position/``attack.name``), run in order.
        threat: the threat model shared by every attack.
        batch_size: samples per forward pass.
        only_robust: attack only the samples still robust (AutoAttack's semantics). ``False`` runs every
            attack on every sample, which per-attack top-k statistics and saved adversarial sets need.
        keep_adv: keep the worst-case adversarial inputs in the result.
        progress: show a tqdm bar over batches.
    """

    def __init__(
        self,
        attacks: Mapping[str, Attack] | Iterable[Attack],
        threat: ThreatModel,
        batch_size: int = 256,
        only_robust: bool = True,
        keep_adv: bool = False,
        progress: bool = False,
        device: str | torch.device | None = None,
    ) -> None:
        if isinstance(attacks, Mapping):
            self.attacks = dict(attacks)
        else:
            self.attacks = {}
            for i, attack in enumerate(attacks):
                name = getattr(attack, "name", f"attack{i}")
                self.attacks[name if name not in self.attacks else f"{name}{i}"] = attack
        self.threat = threat
        self.batch_size = batch_size
        self.only_robust = only_robust
        self.keep_adv = keep_adv
        self.progress = progress
        self.device = device

    def run(
        self,
        model: nn.Module,
        data: Dataset | tuple[Tensor, Tensor],
        checkpoint_dir: str | Path | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> EvalResult:
        """Evaluate ``model`` on a dataset or an ``(x, y)`` pair of tensors.

        With ``checkpoint_dir`` each finished batch is saved there atomically and loaded instead of recomputed
        on the next run (resume after a kill). ``shard=(rank, world)`` evaluates only the batches ``b`` with
        ``b % world == rank``; :func:`merge_batches` puts the shards' batches back together. Batches are fixed
        slices of the data, so a batch's result does not depend on who computes it or when.
        """
        return merge_batches(self.run_batches(model, data, checkpoint_dir, shard), list(self.attacks))

    def run_batches(
        self,
        model: nn.Module,
        data: Dataset | tuple[Tensor, Tensor],
        checkpoint_dir: str | Path | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> dict[int, EvalResult]:
        """The per-batch results ``{batch index: EvalResult}`` of this shard (see :meth:`run`)."""
        if any(m.training for m in model.modules()):
            log.warning(
                "the model is in train mode (dropout/batch-norm statistics change the result); call model.eval()"
            )
        device = self.device or next((p.device for p in model.parameters()), torch.device("cpu"))
        n = len(data[1]) if isinstance(data, tuple) else len(data)  # type: ignore[arg-type]
        if n == 0:
            raise RobustlabError("nothing to evaluate: the dataset is empty")
        rank, world = shard
        mine = [b for b in range((n + self.batch_size - 1) // self.batch_size) if b % world == rank]
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
        done: dict[int, EvalResult] = {}
        for b in mine:
            path = folder / f"batch{b:05d}.pt" if folder is not None else None
            if path is not None and path.exists():
                done[b] = _load_batch(path)
        todo = [b for b in mine if b not in done]
        if done:
            log.info("resuming: %d of %d batches already finished", len(done), len(mine))
        for b, (x, y) in zip(todo, self._batches(data, todo)):
            done[b] = self.run_batch(model, x.to(device), y.to(device))
            if folder is not None:
                atomic_torch_save(done[b].to_state(), folder / f"batch{b:05d}.pt")
        return dict(sorted(done.items()))

    def _batches(self, data: Dataset | tuple[Tensor, Tensor], which: list[int]) -> Iterable[tuple[Tensor, Tensor]]:
        size = self.batch_size
        if isinstance(data, tuple):
            x, y = data
            batches: Iterable = ((x[b * size : (b + 1) * size], y[b * size : (b + 1) * size]) for b in which)
        else:
            n = len(data)  # type: ignore[arg-type]
            sampler = [list(range(b * size, min(n, (b + 1) * size))) for b in which]
            batches = DataLoader(data, batch_sampler=sampler)
        if self.progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=len(which), desc="evaluating", unit="batch", leave=False)
        return batches

    def run_batch(self, model: nn.Module, x: Tensor, y: Tensor) -> EvalResult:
        """Evaluate one batch: clean pass, then each attack on the still-robust samples."""
        self.threat.check_inputs(x)
        with torch.no_grad():
            clean_logits = model_logits(model, x)
        check_labels(y, clean_logits.shape[1])
        correct = top1_correct(clean_logits, y)
        result = EvalResult(y.cpu(), clean_logits.cpu(), correct.cpu())
        robust = correct.clone()
        x_adv = x.clone() if self.keep_adv else None
        for name, attack in self.attacks.items():
            todo = robust.clone() if self.only_robust else torch.ones_like(robust)
            idx = todo.nonzero().squeeze(1)
            success, criterion = torch.zeros_like(robust), torch.zeros_like(robust)
            logits = clean_logits.clone()
            start = time.perf_counter()
            if idx.numel():
                out = attack(model, x[idx], y[idx], self.threat)
                # the headline is top-1 at x_adv, whatever criterion the attack optimised (top-k, targeted)
                success[idx] = correct[idx] & ~top1_correct(out.logits.to(success.device), y[idx])
                criterion[idx] = out.success.to(success.device) & correct[idx]
                logits[idx] = out.logits.to(logits.dtype)
                if x_adv is not None:
                    # keep the first adversarial input that breaks a sample, else the latest attempt
                    replace = robust[idx] | ~correct[idx]
                    x_adv[idx[replace]] = out.x_adv[replace].to(x_adv.dtype)
            result.seconds[name] = time.perf_counter() - start
            robust = robust & ~success  # a new tensor: robust_after of earlier attacks must not change
            result.attacked[name] = todo.cpu()
            result.success[name] = success.cpu()
            result.criterion[name] = criterion.cpu()
            result.adv_logits[name] = logits.cpu()
            result.robust_after[name] = robust.cpu()
        result.x_adv = x_adv.cpu() if x_adv is not None else None
        return result


def top1_correct(logits: Tensor, labels: Tensor) -> Tensor:
    """Per sample: the true class is the arg-max of finite logits (a NaN or inf logit is never correct)."""
    return (logits.argmax(1) == labels) & torch.isfinite(logits).all(1)


def merge_batches(batches: Mapping[int, EvalResult], names: list[str]) -> EvalResult:
    """Merge ``{batch index: EvalResult}`` (e.g. gathered from all ranks) in batch order."""
    return merge_results([batches[b] for b in sorted(batches)], names)


def merge_results(parts: list[EvalResult], names: list[str]) -> EvalResult:
    """Concatenate per-batch results in order."""
    if not parts:
        raise ValueError("nothing to evaluate: the dataset is empty")
    cat = torch.cat
    merged = EvalResult(
        cat([p.labels for p in parts]), cat([p.clean_logits for p in parts]), cat([p.clean_correct for p in parts])
    )
    for name in names:
        merged.attacked[name] = cat([p.attacked[name] for p in parts])
        merged.success[name] = cat([p.success[name] for p in parts])
        merged.criterion[name] = cat([p.criterion.get(name, p.success[name]) for p in parts])
        merged.adv_logits[name] = cat([p.adv_logits[name] for p in parts])
        merged.robust_after[name] = cat([p.robust_after[name] for p in parts])
        merged.seconds[name] = sum(p.seconds[name] for p in parts)
    if all(p.x_adv is not None for p in parts):
        merged.x_adv = cat([p.x_adv for p in parts])  # type: ignore[misc]
    return merged


def _load_batch(path: Path) -> EvalResult:
    """A finished batch of an interrupted run (tensors only: never unpickles objects); one error line otherwise."""
    try:
        return EvalResult.from_state(safe_load(path, what="evaluation batch"))
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; delete it to recompute that batch") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"evaluation batch {str(path)!r} is not a robustlab batch file ({exc}); delete it to recompute it"
        ) from None


def gather_batches(batches: dict[int, EvalResult], shard: Shard) -> dict[int, EvalResult] | None:
    """All ranks' ``{batch: EvalResult}`` on rank 0 (``None`` on the others); a no-op for one process."""
    if not shard.distributed:
        return batches
    parts = gather_to_main({b: r.to_state() for b, r in batches.items()}, shard)
    if parts is None:
        return None
    return {b: EvalResult.from_state(s) for part in parts for b, s in (part or {}).items()}
