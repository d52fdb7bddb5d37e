"""The one training loop: a pluggable "make the training input + loss" step (a :class:`Method`) inside a loop
that owns seeding, the optimizer and LR schedule, atomic per-epoch checkpoints, bit-for-bit resume, epoch-end
callbacks (monitors that may stop or roll back) and DistributedDataParallel.

Contract for methods (``robustlab.defenses.methods`` and the SSL methods build on it):

- ``method.training_loss(model, x, y) -> (loss, stats)``: build the training input (attack, noise, views, ...)
  and return a scalar loss and ``{name: float}`` stats for the log. ``model`` is the module to train the loss
  through (DDP-wrapped under torchrun); inner attacks must run on :func:`unwrap` ``(model)`` so that they cause
  no extra all-reduce, and must only take gradients w.r.t. their input (``GradientAttack`` does that).
- optional ``method.setup(ctx)``: called once before training (e.g. seed a generator with ``ctx.seed`` and
  ``ctx.rank``, move a frozen teacher to ``ctx.device``). Every built-in method gets its randomness from
  :class:`SeededMethod` (one generator per rank, saved in checkpoints).
- optional ``method.state_dict()`` / ``method.load_state_dict(state)``: extra state (random generators, ...)
  saved in every checkpoint, so ``resume`` continues bit-for-bit.
- optional ``method.trainable_parameters(model)``: the parameters the optimizer updates (default: all).

Contract for callbacks (the catastrophic-overfitting monitor, a kNN monitor, ...):

- ``callback.on_epoch_end(ctx) -> Decision | None``: runs on rank 0 only, after each epoch; may add numbers to
  ``ctx.stats`` (they go into the history and may be the ``best_metric``); returns ``"continue"``
  (or ``None``), ``"stop"`` (end training, keep the current weights) or ``"rollback"`` (restore the best
  weights, then end training). The decision is broadcast to every rank.
- optional ``callback.every_steps`` (int > 0) and ``callback.on_step_end(ctx) -> Decision | None``: the same,
  every ``every_steps`` optimizer steps (all ranks stop at the same step).
- optional ``callback.state_dict()`` / ``callback.load_state_dict(state)``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, DistributedSampler

from robustlab.distributed import Shard, broadcast_ints, current_shard
from robustlab.errors import CheckpointError, RobustlabError
from robustlab.io import atomic_torch_save, safe_load, write_json

log = logging.getLogger(__name__)

Decision = Literal["continue", "stop", "rollback"]
_DECISIONS = ("continue", "stop", "rollback")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("cyclic", "piecewise", "cosine", "constant")
_CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "scaler", "method", "callbacks", "epoch", "history"}


@runtime_checkable
class Method(Protocol):
    """A "make the training input + loss" step."""

    name: str

    def training_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Build the training input (attack, noise, views...) and return (scalar loss, stats for logging)."""
        ...


class Callback(Protocol):
    """An epoch-end hook (e.g. the catastrophic-overfitting monitor) that may ask to stop or roll back."""

    def on_epoch_end(self, ctx: TrainContext) -> Decision | None: ...


@dataclass
class TrainConfig:
    """Everything about the optimisation that is not the method itself."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" | "adam"
    lr: float = 0.1  # the peak learning rate (cyclic) or the initial one (piecewise, cosine, constant)
    lr_schedule: str = "cyclic"  # "cyclic" | "piecewise" | "cosine" | "constant"
    momentum: float = 0.9  # SGD momentum (Adam: beta1)
    weight_decay: float = 5e-4
    seed: int = 0
    amp: bool = False  # mixed precision (float16 autocast + grad scaling); only on CUDA, ignored on CPU
    num_workers: int = 0
    drop_last: bool = False
    progress: bool = False  # a tqdm bar per epoch (rank 0)
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch is always saved)
    best_metric: str | None = None  # a key of the epoch stats to keep the best checkpoint by (higher is better)
    max_steps_per_epoch: int | None = None  # cut epochs short (tests, benchmarks)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise RobustlabError(f"epochs and batch size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise RobustlabError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise RobustlabError(f"unknown LR schedule {self.lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise RobustlabError(f"lr must be > 0 and weight decay >= 0, got {self.lr} and {self.weight_decay}")


class SeededMethod:
    """Base of every training method's randomness: one local generator per DDP rank (noise, augmentations, the
    inner attacks' random starts), seeded from the method's ``seed`` (``None``: the run's ``TrainConfig.seed``)
    and saved in the loop's checkpoints, so a resumed run draws the same numbers. The global RNG is never used.
    """

    seed: int | None = None
    _generator: torch.Generator | None = None
    _rank: int = 0
    _run_seed: int = 0

    def setup(self, ctx: TrainContext) -> None:
        """Called by the training loop once: this rank's generator on the training device."""
        self._rank, self._run_seed, self._generator = ctx.rank, ctx.seed, None
        self.generator(ctx.device)

    def generator(self, device: torch.device | str) -> torch.Generator:
        """This rank's generator on ``device``'s type (created and seeded on first use)."""
        device = torch.device(device)
        if self._generator is None or self._generator.device.type != device.type:
            seed = self._run_seed if self.seed is None else self.seed
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(1_000_003 * seed + 7919 * self._rank + 17)
        return self._generator

    def attack_seed(self, device: torch.device | str) -> int:
        """A fresh seed for an inner attack's own generator, drawn from this one (random starts differ per step)."""
        gen = self.generator(device)
        return int(torch.randint(0, 2**62, (), generator=gen, device=gen.device).item())

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state() if self._generator is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("generator") is not None:
            gen = self._generator if self._generator is not None else self.generator("cpu")
            gen.set_state(state["generator"].to(torch.uint8).cpu())


@dataclass
class TrainContext:
    """What methods' ``setup`` and callbacks see."""

    model: nn.Module  # the unwrapped model being trained
    method: Any
    config: TrainConfig
    device: torch.device
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    epoch: int = 0  # 1-based number of the epoch that is running or just ended
    step: int = 0  # optimizer steps so far (global)
    stats: dict[str, float] = field(default_factory=dict)  # this epoch's (or step's) numbers; callbacks add
    history: list[dict[str, float]] = field(default_factory=list)
    out_dir: Path | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


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


def lr_at(config: TrainConfig, progress: float) -> float:
    """The learning rate at ``progress`` in [0, 1] of training (per step, so schedules are smooth)."""
    lr = config.lr
    if config.lr_schedule == "cyclic":  # Wong et al. 2020: 0 -> lr at 2/5 of training -> 0
        peak = 0.4
        return lr * (progress / peak if progress < peak else max(0.0, (1 - progress) / (1 - peak)))
    if config.lr_schedule == "piecewise":
        return lr * (0.1 if progress >= 0.5 else 1.0) * (0.1 if progress >= 0.75 else 1.0)
    if config.lr_schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return lr


def make_optimizer(params: Sequence[nn.Parameter] | Any, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or Adam (weight decay) at ``config.lr``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, betas=(config.momentum, 0.999), weight_decay=config.weight_decay)


class _Batches:
    """Batches of a dataset in the order of a DistributedSampler (one replica unless DDP); fast for in-memory
    ``ImageTensorDataset``-like datasets (``.images`` uint8 + ``.labels``), a DataLoader otherwise."""

    def __init__(self, dataset: Dataset, config: TrainConfig, rank: int, world_size: int) -> None:
        self.dataset = dataset
        self.config = config
        self.sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed, drop_last=False
        )
        self.images, self.labels = _in_memory(dataset)

    def __len__(self) -> int:
        n, b = len(self.sampler), self.config.batch_size
        steps = n // b if self.config.drop_last else math.ceil(n / b)
        return min(steps, self.config.max_steps_per_epoch or steps)

    def epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)  # the data order is a function of (seed, epoch): no state to save
        indices = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
        b = self.config.batch_size
        if self.images is None:
            from torch.utils.data import DataLoader

            loader = DataLoader(
                self.dataset,
                batch_size=b,
                sampler=indices.tolist(),
                num_workers=self.config.num_workers,
                drop_last=self.config.drop_last,
            )
            for i, batch in enumerate(loader):
                if i >= len(self):
                    return
                yield batch[0], batch[1]
            return
        for i in range(len(self)):
            idx = indices[i * b : (i + 1) * b]
            images = self.images[idx]
            x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
            yield x, self.labels[idx]


def _in_memory(dataset: Dataset) -> tuple[Tensor | None, Tensor | None]:
    """``(images, labels)`` tensors behind an in-memory dataset (or a Subset of one), else ``(None, None)``."""
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        images, labels = _in_memory(dataset.dataset)
        if images is None or labels is None:
            return None, None
        idx = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        return images[idx], labels[idx]
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if isinstance(images, Tensor) and isinstance(labels, Tensor):
        return images, labels.long()
    return None, None


def _broadcast_decision(decision: str | None, is_best: bool, shard: Shard, device: torch.device) -> tuple[str, bool]:
    """Rank 0's decision, on every rank."""
    code, best = broadcast_ints([_DECISIONS.index(decision or "continue"), int(is_best)], shard, device)
    return _DECISIONS[code], bool(best)


def _state(obj: Any) -> Any:
    fn = getattr(obj, "state_dict", None)
    return fn() if callable(fn) else None


def _load_state(obj: Any, state: Any) -> None:
    fn = getattr(obj, "load_state_dict", None)
    if state is not None and callable(fn):
        fn(state)


def train(
    model: nn.Module,
    method: Method,
    train_set: Dataset,
    config: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    device: str | torch.device | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    trust_checkpoint: bool = False,
) -> TrainResult:
    """Train ``model`` in place with ``method``'s loss; checkpoints go to ``out_dir`` (``last.pt``, ``best.pt``,
    ``history.json``) every epoch, and ``resume=True`` continues from ``out_dir/last.pt``.

    Under torchrun (torch.distributed initialised) the model is wrapped in DistributedDataParallel, each rank
    sees its shard of every epoch, and only rank 0 writes. ``on_epoch`` receives each epoch's stats (rank 0).
    Checkpoints hold only tensors, numbers, strings, lists and dicts, so resuming reads them with
    ``weights_only=True``; ``trust_checkpoint=True`` (``--trust-checkpoint``) lifts that for files you trust.
    """
    config.validate()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    shard = current_shard()
    rank, world_size = shard.as_tuple()
    model.to(device)
    out = Path(out_dir) if out_dir is not None else None
    use_amp = bool(config.amp and device.type == "cuda")
    if config.amp and not use_amp:
        log.info("mixed precision asked for, but the device is %s: training in float32", device.type)

    ctx = TrainContext(model, method, config, device, rank, world_size, config.seed, out_dir=out)
    if hasattr(method, "setup"):
        method.setup(ctx)
    params_fn = getattr(method, "trainable_parameters", None)
    params = list(params_fn(model)) if callable(params_fn) else [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config)
    batches = _Batches(train_set, config, rank, world_size)
    steps_per_epoch = len(batches)
    if steps_per_epoch == 0:
        raise RobustlabError("the training set gives no batch; use a smaller --batch-size or more data")
    total_steps = config.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(config, (step + 1) / total_steps) / config.lr
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    trained = (
        nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if world_size > 1
        else model
    )

    start_epoch, best_epoch, best_value, stop_reason = 0, None, None, None
    best_state: dict[str, Tensor] | None = None
    train_seconds = 0.0
    if resume:
        if out is None or not (out / "last.pt").is_file():
            raise RobustlabError(
                f"--resume: no checkpoint {out / 'last.pt' if out else 'last.pt'} to continue; start over "
                "without --resume (with --overwrite if the folder holds the run's other files)"
            )
        ckpt = safe_load(out / "last.pt", trust_checkpoint, what="training checkpoint")
        if not isinstance(ckpt, dict) or not set(ckpt) >= _CHECKPOINT_KEYS:
            raise CheckpointError(
                f"{out / 'last.pt'} is not a robustlab training checkpoint; start a new run in another --out"
            )
        if ckpt["steps_per_epoch"] != steps_per_epoch or ckpt["config"]["epochs"] != config.epochs:
            raise RobustlabError(
                "--resume with a different data size, batch size or number of epochs than the checkpoint; "
                "resume with the original settings"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        _load_state(method, ckpt["method"])
        for cb, state in zip(callbacks, ckpt["callbacks"]):
            _load_state(cb, state)
        start_epoch, ctx.history = ckpt["epoch"], ckpt["history"]
        best_epoch, best_value, stop_reason = ckpt["best_epoch"], ckpt["best_value"], ckpt["stop_reason"]
        train_seconds = ckpt["train_seconds"]
        if (out / "best.pt").is_file():
            best_state = safe_load(out / "best.pt", trust_checkpoint, what="best checkpoint")
        log.info("resumed from %s at epoch %d", out / "last.pt", start_epoch)

    def save(epoch: int) -> None:
        if out is None or not ctx.is_main:
            return
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "method": _state(method),
                "callbacks": [_state(cb) for cb in callbacks],
                "epoch": epoch,
                "history": ctx.history,
                "best_epoch": best_epoch,
                "best_value": best_value,
                "stop_reason": stop_reason,
                "train_seconds": train_seconds,
                "steps_per_epoch": steps_per_epoch,
                "config": asdict(config),
            },
            out / "last.pt",
        )
        write_json(out / "history.json", {"config": asdict(config), "history": ctx.history})

    def decide(hook: str, c: Any) -> tuple[str, bool]:
        """Run a callback hook on rank 0 and broadcast its decision."""
        decision = None
        if ctx.is_main:
            decision = getattr(c, hook)(ctx)
            if decision not in (None, *_DECISIONS):
                raise ValueError(f"callback {type(c).__name__} returned {decision!r}; expected one of {_DECISIONS}")
        return _broadcast_decision(decision, False, shard, device)[0], False

    epoch = start_epoch
    while stop_reason is None and epoch < config.epochs:
        epoch += 1
        ctx.epoch = epoch
        trained.train()
        sums: dict[str, float] = {}
        n_steps = 0
        step_decision = "continue"
        bar = batches.epoch(epoch)
        if config.progress and ctx.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(bar, total=steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False)
        started, cpu_started = time.perf_counter(), time.process_time()
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss, stats = method.training_loss(trained, x, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            ctx.step += 1
            n_steps += 1
            for k, v in {"loss": loss.item(), **stats}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss.item():.3f}")
            for c in callbacks:
                every = int(getattr(c, "every_steps", 0) or 0)
                if every > 0 and hasattr(c, "on_step_end") and ctx.step % every == 0:
                    ctx.stats = {}
                    step_decision, _ = decide("on_step_end", c)
                    if step_decision != "continue":
                        break
            if step_decision != "continue":
                break
        epoch_seconds = time.perf_counter() - started
        epoch_cpu_seconds = time.process_time() - cpu_started  # this process's CPU time: robust to other load
        train_seconds += epoch_seconds
        ctx.step = epoch * steps_per_epoch if step_decision == "continue" else ctx.step
        ctx.stats = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": epoch_seconds,
            "epoch_cpu_seconds": epoch_cpu_seconds,
            "steps": n_steps,
            **{k: v / max(n_steps, 1) for k, v in sums.items()},
        }
        decision = step_decision
        for c in callbacks:
            if hasattr(c, "on_epoch_end"):
                d, _ = decide("on_epoch_end", c)
                decision = d if decision == "continue" else decision
        stats = dict(ctx.stats)
        ctx.history.append(stats)
        value = stats.get(config.best_metric) if config.best_metric else None
        is_best = ctx.is_main and value is not None and (best_value is None or value > best_value)
        _, is_best = _broadcast_decision(None, is_best, shard, device)
        if config.best_metric is None or is_best:
            best_epoch, best_value = epoch, value
            best_state = copy.deepcopy(model.state_dict())
            if out is not None and ctx.is_main:
                atomic_torch_save(best_state, out / "best.pt")
        if decision == "rollback" and best_state is not None:
            model.load_state_dict(best_state)
            log.warning("epoch %d: rolled back to the best checkpoint (epoch %s)", epoch, best_epoch)
        if decision != "continue":
            stop_reason = f"{decision} at epoch {epoch}" + (f" step {ctx.step}" if step_decision != "continue" else "")
            log.warning("training ends early: %s", stop_reason)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in stats.items()})
        if on_epoch is not None and ctx.is_main:
            on_epoch(stats)
        if epoch % config.checkpoint_every == 0 or epoch == config.epochs or stop_reason:
            save(epoch)
    model.eval()
    return TrainResult(model, ctx.history, epoch, best_epoch, best_value, stop_reason, train_seconds, out)
