"""How an attack runs its passes: the memory layout (``contiguous`` or ``channels_last``) and the precision of its
gradient steps (``fp32``, or ``bf16``/``fp16`` autocast), ``auto`` choosing either by a short timed probe.

Only the gradient steps run in low precision; the forward pass that judges ``x_adv`` is always float32, so a
reported robust accuracy is the model's own. The choice is cached per model and input shape (one probe per
evaluation), and the attack records it (:attr:`GradientAttack.runtime`) for the reports.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robustlab.attacks import options
from robustlab.errors import RobustlabError

log = logging.getLogger(__name__)

MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PROBE_SAMPLES = 64  # samples per timed probe pass: long enough to time, short next to an attack
MARGIN = 0.93  # a non-default choice must be at least 7 % faster than the default (timing noise)
FP16_LOSS_SCALE = 1024.0  # fp16 input gradients underflow; sign and norm steps do not see a constant factor

_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Runtime]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Runtime:
    """A resolved choice: the layout and the precision of the gradient steps."""

    memory_format: str = "contiguous"
    precision: str = "fp32"

    def to_dict(self) -> dict[str, str]:
        """For reports."""
        return {"memory_format": self.memory_format, "precision": self.precision}

    @property
    def loss_scale(self) -> float:
        """The constant the step objective is multiplied by (fp16 only; sign/normalised steps ignore it)."""
        return FP16_LOSS_SCALE if self.precision == "fp16" else 1.0

    def inputs(self, x: Tensor) -> Tensor:
        """``x`` in this layout."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last(x) else x

    def channels_last(self, x: Tensor) -> bool:
        """Whether this call runs channels_last (only 4-D image batches can)."""
        return self.memory_format == "channels_last" and x.dim() == 4

    @contextlib.contextmanager
    def layout(self, model: nn.Module, x: Tensor) -> Iterator[None]:
        """Run ``model`` in this layout; its parameters are given back exactly as found (the same tensors)."""
        with model_layout(model, self.channels_last(x)):
            yield

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The autocast context of a gradient step (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=DTYPES[self.precision])


@contextlib.contextmanager
def model_layout(model: nn.Module, channels_last: bool) -> Iterator[None]:
    """Give ``model``'s 4-D parameters the channels_last layout for the block, then their own tensors back."""
    saved = []
    if channels_last:
        for p in model.parameters():
            if p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last):
                saved.append((p, p.data))
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for p, data in saved:
            p.data = data


def check_memory_format(value: str) -> str:
    """One of :data:`MEMORY_FORMATS`."""
    return options.choice("memory_format", value, MEMORY_FORMATS)


def check_precision(value: str) -> str:
    """One of :data:`PRECISIONS` (whether the device offers it is checked at the first call)."""
    return options.choice("precision", value, PRECISIONS)


@functools.cache
def offered_precisions(device: torch.device) -> tuple[str, ...]:
    """The precisions offered on ``device``: fp32 always; bf16 where the hardware computes it natively
    (CUDA with bf16, CPUs with AVX512-BF16/AMX); fp16 on CUDA only (on the CPU it was 1.8x slower than fp32)."""
    if device.type == "cuda":
        return ("fp32", "bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16")
    if device.type == "cpu" and _cpu_bf16():
        return ("fp32", "bf16")
    return ("fp32",)


def _cpu_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve(model: nn.Module, x: Tensor, memory_format: str, precision: str) -> Runtime:
    """The runtime for ``model`` on batches like ``x``: the asked choices, ``auto`` ones from a probe (cached)."""
    key = (memory_format, precision, tuple(x.shape[1:]), x.dtype, str(x.device))
    cached = _CACHE.get(model, {}).get(key)
    if cached is not None:
        return cached
    offered = offered_precisions(x.device)
    if precision not in ("auto", *offered):
        raise RobustlabError(
            f"precision {precision!r} is not offered on {x.device.type} here; choose one of {', '.join(offered)}"
        )
    layouts = ("contiguous", "channels_last") if x.dim() == 4 and _has_conv(model) else ("contiguous",)
    layouts = layouts if memory_format == "auto" else (memory_format,)
    precisions = ("fp32", *(p for p in offered if p == "bf16")) if precision == "auto" else (precision,)
    candidates = [Runtime(m, p) for p in precisions for m in layouts]
    choice = candidates[0] if len(candidates) == 1 else _probe(model, x, candidates)
    if len(candidates) > 1:
        log.info("attack runtime for %s on %s: %s", type(model).__name__, tuple(x.shape[1:]), choice)
    _CACHE.setdefault(model, {})[key] = choice
    return choice


def runtime_of(attack: object) -> dict[str, str]:
    """The layout and precision an attack (or the gradient attack a wrapper runs) last ran with; ``{}`` if none."""
    for inner in (attack, getattr(attack, "attack", None), getattr(attack, "untargeted", None)):
        if getattr(inner, "runtime", None):
            return dict(inner.runtime)  # type: ignore[union-attr]
    return {}


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules()) or isinstance(model, torch.jit.ScriptModule)


def _probe(model: nn.Module, x: Tensor, candidates: list[Runtime]) -> Runtime:
    """Time one forward + input-gradient pass per candidate (best of two, after a warm-up); the first candidate is
    the default and wins unless another is clearly faster."""
    x = x[:PROBE_SAMPLES].detach()
    times = []
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        for runtime in candidates:
            with runtime.layout(model, x):
                xs = runtime.inputs(x)
                runs = [_timed_pass(model, xs, runtime) for _ in range(3)]
            times.append(min(runs[1:]))
    best = min(range(len(candidates)), key=times.__getitem__)
    return candidates[best] if times[best] < MARGIN * times[0] else candidates[0]


def _timed_pass(model: nn.Module, x: Tensor, runtime: Runtime) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    start = time.perf_counter()
    xa = x.clone().requires_grad_(True)
    with torch.enable_grad(), runtime.autocast(x.device):
        out = model(xa)
    torch.autograd.grad(out.float().logsumexp(1).sum(), xa)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - start


__all__ = [
    "MEMORY_FORMATS",
    "PRECISIONS",
    "Runtime",
    "check_memory_format",
    "check_precision",
    "model_layout",
    "offered_precisions",
    "resolve",
    "runtime_of",
]
