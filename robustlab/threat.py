"""The threat model: the only place that steps, projects, clips and draws random starts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from robustlab.errors import RobustlabError

NORMS = ("linf", "l2")
_TINY = 1e-12
LOW_PRECISION = (torch.float16, torch.bfloat16)  # a plain cast back can round a point just outside the ball


def parse_eps(value: float | int | str) -> float:
    """Parse an eps such as ``0.03``, ``"8/255"`` or ``"0.5"`` into a float >= 0."""
    if isinstance(value, str):
        text = value.strip()
        try:
            eps = float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise RobustlabError(
                f"eps {value!r} is not a number; give a float like 0.1 or a fraction like 8/255"
            ) from None
    else:
        eps = float(value)
    if not math.isfinite(eps) or eps < 0:
        raise RobustlabError(f"eps must be a finite number >= 0, got {value!r}")
    return eps


def _per_sample_norm(t: Tensor, p: float) -> Tensor:
    """Per-sample p-norm, shaped (N, 1, 1, ...) to broadcast against t."""
    norms = t.flatten(1).norm(p=p, dim=1)
    return norms.view(-1, *([1] * (t.dim() - 1)))


@dataclass(frozen=True)
class ThreatModel:
    """An eps-ball in the Linf or L2 norm around each input, inside the input bounds ``[lo, hi]``."""

    norm: str = "linf"
    eps: float | str = 8 / 255
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        norm = str(self.norm).lower().replace("-", "")
        if norm not in NORMS:
            raise RobustlabError(f"unknown norm {self.norm!r}; choose one of: {', '.join(NORMS)}")
        object.__setattr__(self, "norm", norm)
        object.__setattr__(self, "eps", parse_eps(self.eps))
        lo, hi = (float(b) for b in self.bounds)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise RobustlabError(f"bounds must be finite numbers with lo < hi, got {self.bounds!r}")
        object.__setattr__(self, "bounds", (lo, hi))
        if norm == "linf" and self.eps > hi - lo:
            raise RobustlabError(
                f"Linf eps {self.eps:g} exceeds the width of the bounds [{lo:g}, {hi:g}], so every input is "
                f"reachable; give eps <= {hi - lo:g} (pixels in [0, 1]: e.g. 8/255, not 8)"
            )

    def with_eps(self, eps: float | str) -> ThreatModel:
        """The same threat model at another eps."""
        return ThreatModel(self.norm, eps, self.bounds)

    def clip(self, x: Tensor, *, inplace: bool = False) -> Tensor:
        """Clip to the input bounds (``inplace``: overwrite ``x``, a temporary the caller gives up)."""
        return x.clamp_(self.bounds[0], self.bounds[1]) if inplace else x.clamp(self.bounds[0], self.bounds[1])

    def step(self, x_adv: Tensor, grad: Tensor, step_size: float) -> Tensor:
        """One ascent step: ``sign(g)`` for Linf, ``g / ||g||_2`` for L2 (no projection)."""
        if self.norm == "linf":
            if grad.dtype == x_adv.dtype and grad.shape == x_adv.shape:  # s * sign(g) is exact: the same bits as
                return grad.sign().mul_(step_size).add_(x_adv)  # x + s * sign(g), with one allocation, not three
            return x_adv + step_size * grad.sign()
        grad = grad.float() if grad.dtype in LOW_PRECISION else grad  # a float16 norm underflows to 0
        return x_adv + (step_size * grad / _per_sample_norm(grad, 2).clamp_min(_TINY)).to(x_adv.dtype)

    def project(self, x_adv: Tensor, x: Tensor, *, inplace: bool = False, radius: Tensor | None = None) -> Tensor:
        """Project ``x_adv`` onto the eps-ball around ``x``, then clip to the bounds.

        In float16/bfloat16 the result lies in the ball and the bounds exactly, in the input's dtype. ``inplace``:
        ``x_adv`` is a temporary the caller gives up, and may be overwritten (an attack's step; the same result).
        ``radius``: a per-sample radius (N,) in place of eps (minimum-norm attacks: each sample's own ball).
        """
        if radius is not None:
            radius = radius.to(torch.float32).view(-1, *([1] * (x.dim() - 1)))
            if x.dtype in LOW_PRECISION:  # float32 arithmetic, rounded back (no inward rounding for a varying ball)
                return self.project(x_adv.float(), x.float(), radius=radius.flatten()).to(x.dtype)
        if x.dtype in LOW_PRECISION:
            return self._project_low_precision(x_adv, x)
        own = inplace and x_adv.dtype == x.dtype and x_adv.shape == x.shape and not x_adv.requires_grad
        delta = x_adv.sub_(x) if own else x_adv - x  # then in place on delta: fewer allocations, the same bits
        eps = self.eps if radius is None else radius.to(delta.dtype)
        if self.norm == "linf":
            delta = delta.clamp_(-eps, eps) if radius is None else torch.maximum(torch.minimum(delta, eps), -eps)
        else:
            delta = delta * (eps / _per_sample_norm(delta, 2).clamp_min(_TINY)).clamp(max=1.0)
        return self.clip(delta.add_(x), inplace=True)

    def _project_low_precision(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Project in float32, round back to ``x``'s dtype, and pull back what rounding pushed outside."""
        out = self.project(x_adv.float(), x.float()).to(x.dtype)
        if self.norm == "linf":
            lo = _round_inward(torch.clamp(x.double() - self.eps, min=self.bounds[0]), x.dtype, up=True)
            hi = _round_inward(torch.clamp(x.double() + self.eps, max=self.bounds[1]), x.dtype, up=False)
            return torch.minimum(torch.maximum(out, lo), hi)
        shrink = 1 - 4 * torch.finfo(x.dtype).eps
        for _ in range(16):  # shrink the few samples whose rounded delta is a hair too long
            over = self.distance(out.double(), x.double()) > self.eps
            if not bool(over.any()):
                return out
            delta = (out[over].float() - x[over].float()) * shrink
            out[over] = self.clip(x[over].float() + delta).to(x.dtype)
        over = self.distance(out.double(), x.double()) > self.eps
        out[over] = x[over]  # rounding would not let them in (eps near the dtype's resolution): no perturbation
        return out

    def random_start(self, x: Tensor, generator: torch.Generator | None = None, l2_radius: str = "ball") -> Tensor:
        """A random point of the eps-ball around ``x``, clipped to the bounds.

        Linf: uniform in the cube. L2: a uniform direction with radius ``eps * U^(1/d)`` (``l2_radius="ball"``,
        uniform in the ball, so almost on its surface in high dimension) or ``eps * U`` (``"uniform"``,
        torchattacks' choice, which leaves short attacks less random noise to undo).
        """
        if self.norm == "linf":
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            delta = (2 * u - 1) * self.eps
        else:
            direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            direction = direction / _per_sample_norm(direction, 2).clamp_min(_TINY)
            d = x[0].numel()
            u = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype)
            if l2_radius not in ("ball", "uniform"):
                raise RobustlabError(f"unknown l2_radius {l2_radius!r}; choose ball or uniform")
            radius = self.eps * (u.pow(1.0 / d) if l2_radius == "ball" else u)
            delta = direction * radius.view(-1, *([1] * (x.dim() - 1)))
        if x.dtype in LOW_PRECISION:
            return self.project(x + delta, x)
        return self.clip(x + delta)

    def distance(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Per-sample distance in the threat model's norm, shape (N,)."""
        p = math.inf if self.norm == "linf" else 2
        return (x_adv - x).flatten(1).norm(p=p, dim=1)

    def check_inputs(self, x: Tensor, atol: float = 1e-6) -> None:
        """Raise if ``x`` holds NaN or inf, or lies outside the bounds (e.g. normalised images, not [0, 1] pixels)."""
        lo, hi = self.bounds
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = (~finite).flatten(1).any(1).nonzero().flatten().tolist() if x.dim() > 1 else []
            raise RobustlabError(
                f"inputs hold NaN or inf ({(~finite).sum().item()} values"
                + (f", samples {bad[:5]}{' ...' if len(bad) > 5 else ''}" if bad else "")
                + "); clean or drop them before attacking"
            )
        if x.numel() and (x.min().item() < lo - atol or x.max().item() > hi + atol):
            raise RobustlabError(
                f"inputs lie in [{x.min().item():.3g}, {x.max().item():.3g}], outside the bounds "
                f"[{lo:g}, {hi:g}]; pass raw pixels and put normalisation inside the model "
                "(robustlab.models.Normalize), or set the threat model's bounds"
            )

    def to_dict(self) -> dict:
        """The threat model as JSON-ready values, for reports."""
        return {"norm": self.norm, "eps": self.eps, "bounds": list(self.bounds)}


def _round_inward(t: Tensor, dtype: torch.dtype, up: bool) -> Tensor:
    """``t`` (float64) rounded to ``dtype``, towards +inf (``up``) or -inf, so that it stays on its side."""
    rounded = t.to(dtype)
    wrong = rounded.double() < t if up else rounded.double() > t
    direction = torch.full_like(rounded, math.inf if up else -math.inf)
    return torch.where(wrong, torch.nextafter(rounded, direction), rounded)
