"""The one training loop: a :class:`~robustlab.training.method.Method` (the "make the training input + loss" step)
inside a loop that owns seeding, the optimizer and LR schedule, atomic per-epoch checkpoints, bit-for-bit resume,
callbacks that may stop or roll back, and DistributedDataParallel. In the PyTorch reference scripts' shape:
:meth:`_Loop.train_one_epoch`, :meth:`_Loop.end_epoch` and the checkpoint functions, each a screen.

Callbacks and what they see: :mod:`robustlab.training.context`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset

from robustlab.distributed import Shard, broadcast_ints, current_shard
from robustlab.errors import RobustlabError
from robustlab.training.batches import Batches
from robustlab.training.checkpoint import resume_from, save_checkpoint
from robustlab.training.config import LR_SCHEDULES, OPTIMIZERS, TrainConfig, lr_at, make_optimizer
from robustlab.training.context import DECISIONS, Callback, TrainContext
from robustlab.training.method import Method
from robustlab.training.metrics import open_metrics

log = logging.getLogger(__name__)

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainResult:
    """The outcome of :func:`train`: the trained model, per-epoch history and where it stopped."""

    model: nn.Module
    history: list[dict[str, float]]
    epochs_done: int
    best_epoch: int | None
    best_value: float | None
    stop_reason: str | None  # None: all epochs ran; else "stop"/"rollback" and where
    train_seconds: float
    out_dir: Path | None


@dataclass
class _Loop:
    """The state of one training run: what :func:`train` builds and the epoch functions share."""

    model: nn.Module
    trained: nn.Module  # the model, DDP-wrapped under torchrun
    method: Method
    callbacks: Sequence[Callback]
    config: TrainConfig
    ctx: TrainContext
    shard: Shard
    batches: Batches
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    precision: str  # the resolved one: "fp32", "bf16" or "fp16"
    out: Path | None
    start_epoch: int = 0
    best_epoch: int | None = None
    best_value: float | None = None
    best_state: dict[str, Tensor] | None = None
    best_step: int | None = None  # the global step the best state was taken at
    best_unsaved: bool = False  # a best state taken at a step check, written to best.pt at the epoch's end
    stop_reason: str | None = None
    train_seconds: float = 0.0
    metrics: Any = None  # the run's MetricsLogger (rank 0 with a run folder), else None

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    def decide(self, hook: Callable[[TrainContext], str | None], callback: Callback) -> str:
        """Run a callback's hook on rank 0 and broadcast its decision."""
        decision = None
        if self.ctx.is_main:
            decision = hook(self.ctx)
            if decision not in (None, *DECISIONS):
                raise ValueError(f"callback {type(callback).__name__} returned {decision!r}; expected {DECISIONS}")
        return _broadcast(decision, False, self.shard, self.device)[0]

    def step_callbacks(self) -> str:
        """The step-level callbacks due at this (global) step; their first non-"continue" decision."""
        for c in self.callbacks:
            if c.every_steps > 0 and self.ctx.step % c.every_steps == 0:
                self.ctx.stats = {}
                decision = self.decide(c.on_step_end, c)
                if self.metrics is not None:
                    self.metrics.monitor(self.ctx.step, self.ctx.stats)
                self.keep_if_best(self.ctx.stats, at_step=True)  # a rollback can return to a state inside an epoch
                if decision != "continue":
                    return decision
        return "continue"

    def train_one_epoch(self, epoch: int) -> tuple[dict[str, float], int, str]:
        """One epoch of optimizer steps: (summed stats, steps taken, the step callbacks' decision)."""
        ctx, config = self.ctx, self.config
        self.trained.train()
        sums: dict[str, float] = {}
        n_steps, decision = 0, "continue"
        bar: Any = self.batches.epoch(epoch)
        if config.progress and ctx.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(bar, total=len(self.batches), desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False)
        channels_last = config.memory_format == "channels_last"
        for x, labels in bar:  # the dataset's labels (self-supervised methods ignore them)
            x, labels = x.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=AUTOCAST.get(self.precision), enabled=self.precision != "fp32"):
                loss, stats = self.method.training_loss(self.trained, x, labels)
            self.check_finite(loss.item(), epoch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
            self.scheduler.step()
            ctx.step += 1
            n_steps += 1
            if self.metrics is not None:
                self.metrics.step(ctx.step, {"loss": loss.item(), "lr": lr, **stats})
            for k, v in {"loss": loss.item(), **stats}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss.item():.3f}")
            decision = self.step_callbacks()
            if decision != "continue":
                break
        return sums, n_steps, decision

    def keep_if_best(self, stats: dict[str, Any], at_step: bool) -> bool:
        """Keep the weights as the best state when ``stats`` beat the best ``best_metric`` so far (at an epoch's
        end without a metric: always); at a step check, best.pt is written at the epoch's end."""
        metric = self.config.best_metric
        value = stats.get(metric) if metric else None
        if metric is None and at_step:
            return False
        is_best = self.ctx.is_main and value is not None and (self.best_value is None or value > self.best_value)
        is_best = _broadcast(None, is_best, self.shard, self.device)[1]
        if metric is not None and not is_best:
            return False
        self.best_epoch, self.best_value, self.best_step = self.ctx.epoch, value, self.ctx.step
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.best_unsaved = at_step
        return True

    def check_finite(self, loss: float, epoch: int) -> None:
        """Stop before a non-finite loss reaches the weights (every rank alike); the last checkpoint stays."""
        ok = torch.tensor([int(math.isfinite(loss))], device=self.device)
        if self.shard.distributed:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if not ok.item():
            saved = self.out is not None and (self.out / "last.pt").is_file()
            kept = f"{self.out / 'last.pt'} keeps the last good epoch" if saved else "no epoch was saved"
            raise RobustlabError(
                f"the training loss became non-finite ({loss}) at epoch {epoch}, step {self.ctx.step + 1}; training "
                f"stopped ({kept}): lower --lr or check the hyper-parameters and the data"
            )

    def end_epoch(self, epoch: int, sums: dict[str, float], n_steps: int, step_decision: str, seconds: tuple) -> None:
        """Epoch stats, the epoch callbacks' decision, the best checkpoint, rollback and the log line."""
        ctx = self.ctx
        ctx.step = epoch * len(self.batches) if step_decision == "continue" else ctx.step
        ctx.stats = {
            "epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "epoch_seconds": seconds[0],
            "epoch_cpu_seconds": seconds[1], "steps": n_steps, **{k: v / max(n_steps, 1) for k, v in sums.items()},
        }  # fmt: skip
        decision = step_decision
        for c in self.callbacks:
            d = self.decide(c.on_epoch_end, c)
            decision = d if decision == "continue" else decision
        stats = dict(ctx.stats)
        ctx.history.append(stats)
        if self.metrics is not None:
            self.metrics.epoch(epoch, ctx.step, stats)
        if self.keep_if_best(stats, at_step=False) or self.best_unsaved:
            self.best_unsaved = False
            if self.out is not None and ctx.is_main:
                from robustlab.io import atomic_torch_save

                atomic_torch_save(self.best_state, self.out / "best.pt")
        if decision == "rollback" and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            log.warning("epoch %d: rolled back to the best checkpoint (epoch %s, step %s)", epoch, self.best_epoch,
                        self.best_step)  # fmt: skip
        if decision != "continue":
            where = f" step {ctx.step}" if step_decision != "continue" else ""
            self.stop_reason = f"{decision} at epoch {epoch}{where}"
            log.warning("training ends early: %s", self.stop_reason)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in stats.items()})

    def run(self, on_epoch: Callable[[dict[str, float]], None] | None) -> int:
        """Epochs from the start (or the resumed) epoch until the last one or a stop; returns the last epoch."""
        epoch = self.start_epoch
        while self.stop_reason is None and epoch < self.config.epochs:
            epoch += 1
            self.ctx.epoch = epoch
            started, cpu_started = time.perf_counter(), time.process_time()
            sums, n_steps, step_decision = self.train_one_epoch(epoch)
            seconds = (time.perf_counter() - started, time.process_time() - cpu_started)
            self.train_seconds += seconds[0]
            self.end_epoch(epoch, sums, n_steps, step_decision, seconds)
            if on_epoch is not None and self.ctx.is_main:
                on_epoch(self.ctx.history[-1])
            if epoch % self.config.checkpoint_every == 0 or epoch == self.config.epochs or self.stop_reason:
                save_checkpoint(self, epoch)
        return epoch


def _broadcast(decision: str | None, is_best: bool, shard: Shard, device: torch.device) -> tuple[str, bool]:
    """Rank 0's decision and best flag, on every rank."""
    code, best = broadcast_ints([DECISIONS.index(decision or "continue"), int(is_best)], shard, device)
    return DECISIONS[code], bool(best)


def _build_loop(model, method, train_set, config, out, callbacks, device) -> _Loop:
    """Everything a run needs, before the first step: the method set up, optimizer, schedule, scaler, DDP."""
    shard = current_shard()
    rank, world_size = shard.as_tuple()
    model.to(device)
    precision = _precision(config, device)  # refused before the model is touched
    if config.memory_format == "channels_last":
        model.to(memory_format=torch.channels_last)  # undone when train() returns
    ctx = TrainContext(model, method, config, device, rank, world_size, config.seed, out_dir=out)
    method.setup(ctx)
    optimizer = make_optimizer(list(method.trainable_parameters(model)), config)
    batches = Batches(
        train_set, config.batch_size, config.seed, rank, world_size, config.drop_last, config.max_steps_per_epoch,
        config.num_workers,
    )  # fmt: skip
    if len(batches) == 0:
        raise RobustlabError("the training set gives no batch; use a smaller --batch-size or more data")
    total_steps = config.epochs * len(batches)
    ctx.total_steps = total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(config, (step + 1) / total_steps) / config.lr
    )
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    trained = (
        nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if world_size > 1
        else model
    )
    return _Loop(model, trained, method, callbacks, config, ctx, shard, batches, optimizer, scheduler, scaler,
                 precision, out)  # fmt: skip


def _precision(config: TrainConfig, device: torch.device) -> str:
    """The precision the run trains in: ``config.precision``, refused with one line where the device does not
    compute it natively."""
    from robustlab.attacks.runtime import offered_precisions

    offered = offered_precisions(device)
    if config.precision not in offered:
        raise RobustlabError(
            f"precision {config.precision!r} is not offered on {device.type} here; choose one of {', '.join(offered)}"
        )
    return config.precision


def train(
    model: nn.Module,
    method: Method,
    train_set: Dataset,
    config: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    device: str | torch.device | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    trust_checkpoint: bool = False,
) -> TrainResult:
    """Train ``model`` in place with ``method``'s loss; checkpoints go to ``out_dir`` (``last.pt``, ``best.pt``,
    ``history.json``) every epoch, and ``resume=True`` continues from ``out_dir/last.pt``.

    Under torchrun the model is wrapped in DistributedDataParallel, each rank sees its shard of every epoch, and
    only rank 0 writes, with the per-step and per-epoch scalars in ``metrics.jsonl`` (and TensorBoard events with
    ``config.tensorboard``). ``on_epoch`` receives each epoch's stats (rank 0). Checkpoints hold only tensors, numbers,
    strings, lists and dicts, so resuming reads them with ``weights_only=True`` (``trust_checkpoint`` lifts that).
    A non-finite loss stops training with a :class:`RobustlabError` before it reaches the weights.
    """
    if not isinstance(method, Method):
        raise TypeError(f"{type(method).__name__} is not a robustlab.training.Method; subclass it")
    bad = [type(c).__name__ for c in callbacks if not isinstance(c, Callback)]
    if bad:
        raise TypeError(f"callbacks {', '.join(bad)} do not subclass robustlab.training.Callback; subclass it")
    config.validate()
    method.check(config)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = Path(out_dir) if out_dir is not None else None
    loop = _build_loop(model, method, train_set, config, out, callbacks, device)
    if resume:
        resume_from(loop, trust_checkpoint)
    loop.metrics = open_metrics(out, loop.ctx.is_main, config.tensorboard, loop.ctx.step if resume else None)
    try:
        epoch = loop.run(on_epoch)
    finally:
        if loop.metrics is not None:
            loop.metrics.close()
        if config.memory_format == "channels_last":
            model.to(memory_format=torch.contiguous_format)
    model.eval()
    return TrainResult(
        model, loop.ctx.history, epoch, loop.best_epoch, loop.best_value, loop.stop_reason, loop.train_seconds, out
    )


__all__ = [
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "TrainConfig",
    "TrainResult",
    "lr_at",
    "make_optimizer",
    "train",
]
