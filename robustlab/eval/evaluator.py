"""The one robust-accuracy evaluator: clean correctness, then each attack on what is still robust.

AutoAttack's semantics: a sample counts as robust only if it is classified correctly and no attack in the
list succeeds on it; each attack runs only on the samples still robust after the previous ones, so the
final figure is the per-sample worst case over the attacks, as a fraction of all samples.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from robustlab.attacks.default import stage_entries
from robustlab.attacks.protocol import Attack, as_attack, check_labels, model_logits, untouched
from robustlab.distributed import Shard, gather_to_main
from robustlab.errors import CheckpointError, RobustlabError
from robustlab.eval.progress import NoProgress, SampleProgress, sample_progress
from robustlab.eval.result import EvalResult
from robustlab.io import atomic_torch_save
from robustlab.models.counting import counted_model
from robustlab.safe_load import safe_load
from robustlab.threat import ThreatModel

log = logging.getLogger(__name__)

VOTES = ("mean", "majority")


class Evaluator:
    """Runs attacks at one threat model over a dataset or a batch, attacking only what is still robust.

    Args:
        attacks: ``{name: attack}`` (or a list, named by position/``attack.name``), run in order.
        threat: the threat model shared by every attack.
        batch_size: samples per forward pass.
        only_robust: attack only the samples still robust (AutoAttack's semantics). ``False`` runs every
            attack on every sample, which per-attack top-k statistics and saved adversarial sets need.
        keep_adv: keep the worst-case adversarial inputs in the result.
        progress: show a bar counting samples and naming the attack at work (a string: the bar's title).
        predictions: forward passes per judgement (clean and at every attack's ``x_adv``) for a randomised model,
            so one lucky pass does not count; 1 (the default) judges a single pass.
        vote: how ``predictions`` passes make one prediction: ``"mean"`` (mean logits) or ``"majority"`` (the
            class most passes predict; a tie counts against the true class).
        seed: seeds the global RNG, inside a fork, for those passes (the caller's RNG is untouched).
    """

    def __init__(
        self,
        attacks: Mapping[str, Attack] | Iterable[Attack],
        threat: ThreatModel,
        batch_size: int = 256,
        only_robust: bool = True,
        keep_adv: bool = False,
        progress: bool | str = False,
        device: str | torch.device | None = None,
        predictions: int = 1,
        vote: str = "mean",
        seed: int = 0,
    ) -> None:
        if predictions < 1 or vote not in VOTES:
            raise RobustlabError(f"predictions {predictions}, vote {vote!r}: give 1 or more passes, vote {VOTES}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise RobustlabError(f"batch_size {batch_size!r}: give a whole number of samples >= 1, e.g. 256")
        device = checked_device(device) if device is not None else None
        self.predictions, self.vote, self.seed = int(predictions), vote, seed
        if isinstance(attacks, Mapping):
            self.attacks = dict(attacks)
        else:
            self.attacks = {}
            for i, attack in enumerate(map(as_attack, attacks)):
                self.attacks[attack.name if attack.name not in self.attacks else f"{attack.name}{i}"] = attack
        self.attacks = {name: as_attack(attack) for name, attack in self.attacks.items()}  # the whole protocol
        self.attacks = stage_entries(self.attacks) if only_robust else self.attacks  # else a protocol chains its own
        self.threat = threat
        self.batch_size = batch_size
        self.only_robust = only_robust
        self.keep_adv = keep_adv
        self.progress = progress
        self._bar: SampleProgress | NoProgress = NoProgress()
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
        prior: Mapping[int, EvalResult] | None = None,
    ) -> dict[int, EvalResult]:
        """The per-batch results ``{batch index: EvalResult}`` of this shard (see :meth:`run`).

        ``prior`` (nested eps) holds this shard's batch results at a smaller eps: a sample broken there counts as
        broken here, with the example that broke it, and only the others are attacked."""
        if any(m.training for m in model.modules()):
            log.warning(
                "the model is in train mode (dropout/batch-norm statistics change the result); call model.eval()"
            )
        device = self.device or next((p.device for p in model.parameters()), torch.device("cpu"))
        data = as_data(data)
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
        self._bar = sample_progress(self.progress, sum(min(n, (b + 1) * self.batch_size) - b * self.batch_size
                                                       for b in todo))  # fmt: skip
        try:
            for b, (x, y) in zip(todo, self._batches(data, todo)):
                done[b] = self.run_batch(model, x.to(device), y.to(device), prior[b] if prior is not None else None)
                self._bar.update(len(y))
                if folder is not None:
                    atomic_torch_save(done[b].to_state(), folder / f"batch{b:05d}.pt")
        finally:
            self._bar.close()
            self._bar = NoProgress()
        return dict(sorted(done.items()))

    def _batches(self, data: Dataset | tuple[Tensor, Tensor], which: list[int]) -> Iterable[tuple[Tensor, Tensor]]:
        size, n = self.batch_size, len(data[1]) if isinstance(data, tuple) else len(data)  # type: ignore[arg-type]
        if isinstance(data, tuple):
            return ((data[0][b * size : (b + 1) * size], data[1][b * size : (b + 1) * size]) for b in which)
        return DataLoader(data, batch_sampler=[list(range(b * size, min(n, (b + 1) * size))) for b in which])

    def predict(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The logits the evaluator judges: one pass, or the mean logits / vote shares of ``predictions`` passes. A
        train-mode model is given back as found (BatchNorm statistics, the caller's RNG), as attacks give it back."""
        with torch.no_grad(), as_found(model, x.device):
            if self.predictions == 1:
                return model_logits(model, x)
            devices = [x.device] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                passes = torch.stack([model_logits(model, x) for _ in range(self.predictions)])
        if self.vote == "mean":
            return passes.mean(0)
        shares = torch.nn.functional.one_hot(passes.argmax(2), passes.shape[2]).to(passes.dtype).mean(0)
        shares = shares - 0.25 / self.predictions * torch.nn.functional.one_hot(y, passes.shape[2])  # a tie loses
        return torch.where(torch.isfinite(passes).all(2).all(0)[:, None], shares, float("nan"))

    def run_batch(self, model: nn.Module, x: Tensor, y: Tensor, prior: EvalResult | None = None) -> EvalResult:
        """Evaluate one batch: clean pass, then each attack on the still-robust samples. With ``prior``, a result of
        this batch at a smaller eps, the samples it broke are carried over (broken here too, with that example):
        not attacked when every attack's per-sample result is independent of its batch (``per_sample``), else
        attacked as a separate evaluation would (the same batches, so the same draws) and carried after, so nested
        is never above separate either way."""
        x, y = as_batch(model, *as_data((x, y)))
        self.threat.check_inputs(x)
        with counted_model(model) as (counted, judging):  # the evaluator's own passes: clean and judging
            clean_logits = self.predict(counted, x, y) if prior is None else prior.clean_logits.to(x.device)
        check_labels(y, clean_logits.shape[1])
        correct = top1_correct(clean_logits, y)
        result = EvalResult(y.cpu(), clean_logits.cpu(), correct.cpu())
        robust = correct.clone()  # the attacks' chain: what each attack is run on
        carried = torch.zeros_like(robust)
        x_adv = x.clone() if self.keep_adv else None
        if prior is not None:
            carried = (prior.clean_correct & ~prior.robust).to(robust.device)
            result.carried, result.carried_logits = carried.cpu(), prior.breaking_logits()
            if self.per_sample:
                robust &= ~carried
            if x_adv is not None and prior.x_adv is not None:
                x_adv[carried] = prior.x_adv.to(x_adv.device, x_adv.dtype)[carried]
        for name, attack in self.attacks.items():
            todo = robust.clone() if self.only_robust else torch.ones_like(robust)
            idx = todo.nonzero().squeeze(1)
            success, criterion = torch.zeros_like(robust), torch.zeros_like(robust)
            logits = clean_logits.clone()
            start = time.perf_counter()
            result.forward_passes[name] = result.backward_passes[name] = 0
            if idx.numel():
                with self._bar.attack(model, name, attack, idx.numel()), counted_model(model) as (counted, passes):
                    out = attack(counted, x[idx], y[idx], self.threat)
                result.forward_passes[name], result.backward_passes[name] = passes.forward, passes.backward
                with counted_model(model, judging) as (counted, _):
                    judged = out.logits if self.predictions == 1 else self.predict(counted, out.x_adv, y[idx])
                # the headline is top-1 at x_adv, whatever criterion the attack optimised (top-k, targeted)
                success[idx] = correct[idx] & ~top1_correct(judged.to(success.device), y[idx])
                criterion[idx] = out.success.to(success.device) & correct[idx]
                logits[idx] = judged.to(logits.dtype)
                if x_adv is not None:
                    # keep the first adversarial input that breaks a sample (a carried one keeps its own), else the
                    # latest attempt
                    replace = (robust[idx] & ~carried[idx]) | ~correct[idx]
                    x_adv[idx[replace]] = out.x_adv[replace].to(x_adv.dtype)
            result.seconds[name] = time.perf_counter() - start
            robust = robust & ~success  # a new tensor: robust_after of earlier attacks must not change
            result.attacked[name] = todo.cpu()
            result.broken[name] = (success & ~carried).cpu()
            result.criterion[name] = (criterion & ~carried).cpu()
            result.adv_logits[name] = logits.cpu()
            result.robust_after[name] = (robust & ~carried).cpu()
        result.x_adv = x_adv.cpu() if x_adv is not None else None
        result.clean_passes = judging.forward
        return result

    @property
    def per_sample(self) -> bool:
        """Whether every attack's result for a sample is independent of its batch (see :meth:`run_batch`)."""
        return all(attack.per_sample for attack in self.attacks.values())


def checked_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, or one error line (no CUDA GPU visible, an unknown name)."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RobustlabError(f"device {str(device)!r} asked for, but no CUDA GPU is visible; use device='cpu'")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise RobustlabError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from None


def as_data(data: Dataset | tuple[Tensor, Tensor]) -> Dataset | tuple[Tensor, Tensor]:
    """A dataset as it is, or an ``(x, y)`` pair as tensors (numpy arrays converted, lists refused), one label per
    input; one error line for anything else."""
    sequence = hasattr(data, "__len__") and hasattr(data, "__getitem__")
    if isinstance(data, Dataset) or (sequence and not isinstance(data, (tuple, list, Tensor, np.ndarray))):
        return data  # type: ignore[return-value]  # a map-style dataset, a Dataset subclass or not
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise RobustlabError(
            f"data is a {type(data).__name__}; give a torch Dataset or an (x, y) pair of tensors (images, labels)"
        )
    x, y = (_tensor(v, name) for v, name in zip(data, ("x", "y")))
    if x.dim() == 0 or y.dim() != 1 or len(x) != len(y):
        labels = f"holds {len(y)} labels" if y.dim() == 1 else f"has shape {tuple(y.shape)}"
        raise RobustlabError(
            f"x holds {len(x) if x.dim() else 0} inputs but y {labels}; give one integer label per input (y of shape "
            "(N,))"
        )
    if y.is_floating_point() or y.dtype == torch.bool:
        raise RobustlabError(f"labels y have dtype {y.dtype}; give integer class indices, e.g. y.long()")
    return x, y


def _tensor(value: object, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise RobustlabError(
        f"{name} is a {type(value).__name__}; give a torch tensor or a numpy array (e.g. torch.as_tensor({name}))"
    )


def as_batch(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """A non-empty batch whose floating-point inputs have the model's dtype (float64 images for a float32 model
    are converted, with a note in the log)."""
    if len(y) == 0:
        raise RobustlabError("nothing to evaluate: the batch is empty")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if x.is_floating_point() and x.dtype != dtype:
        log.info("inputs of dtype %s converted to the model's %s", x.dtype, dtype)
        x = x.to(dtype)
    return x, y


def as_found(model: nn.Module, device: torch.device) -> contextlib.AbstractContextManager:
    """:func:`~robustlab.attacks.protocol.untouched` for a model with a module in train mode (its passes would
    update BatchNorm's running statistics); nothing to restore, so nothing done, for an eval-mode model."""
    return untouched(model, device) if any(m.training for m in model.modules()) else contextlib.nullcontext()


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
        merged.broken[name] = cat([p.broken[name] for p in parts])
        merged.criterion[name] = cat([p.criterion.get(name, p.broken[name]) for p in parts])
        merged.adv_logits[name] = cat([p.adv_logits[name] for p in parts])
        merged.robust_after[name] = cat([p.robust_after[name] for p in parts])
        merged.seconds[name] = sum(p.seconds[name] for p in parts)
        merged.forward_passes[name] = sum(p.forward_passes.get(name, 0) for p in parts)  # summed over shards too
        merged.backward_passes[name] = sum(p.backward_passes.get(name, 0) for p in parts)
    merged.clean_passes = sum(p.clean_passes for p in parts)
    if all(p.x_adv is not None for p in parts):
        merged.x_adv = cat([p.x_adv for p in parts])  # type: ignore[misc]
    if all(p.carried is not None for p in parts):
        merged.carried = cat([p.carried for p in parts])  # type: ignore[misc]
        merged.carried_logits = cat([p.carried_logits for p in parts])  # type: ignore[misc]
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
