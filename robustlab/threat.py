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
        if not lo < hi:
            raise RobustlabError(f"bounds must satisfy lo < hi, got {self.bounds!r}")
        object.__setattr__(self, "bounds", (lo, hi))

    def with_eps(self, eps: float | str) -> ThreatModel:
        """The same threat model at another eps."""
        return ThreatModel(self.norm, eps, self.bounds)

    def clip(self, x: Tensor) -> Tensor:
        """Clip to the input bounds."""
        return x.clamp(self.bounds[0], self.bounds[1])

    def step(self, x_adv: Tensor, grad: Tensor, step_size: float) -> Tensor:
        """One ascent step: ``sign(g)`` for Linf, ``g / ||g||_2`` for L2 (no projection)."""
        if self.norm == "linf":
            return x_adv + step_size * grad.sign()
        return x_adv + step_size * grad / _per_sample_norm(grad, 2).clamp_min(_TINY)

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Project ``x_adv`` onto the eps-ball around ``x``, then clip to the bounds."""
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = _per_sample_norm(delta, 2)
            delta = delta * (self.eps / norms.clamp_min(_TINY)).clamp(max=1.0)
        return self.clip(x + delta)

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
        return self.clip(x + delta)

    def distance(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Per-sample distance in the threat model's norm, shape (N,)."""
        p = math.inf if self.norm == "linf" else 2
        return (x_adv - x).flatten(1).norm(p=p, dim=1)

    def check_inputs(self, x: Tensor, atol: float = 1e-6) -> None:
        """Raise if ``x`` lies outside the bounds (e.g. normalised images instead of [0, 1] pixels)."""
        lo, hi = self.bounds
        if x.numel() and (x.min().item() < lo - atol or x.max().item() > hi + atol):
            raise RobustlabError(
                f"inputs lie in [{x.min().item():.3g}, {x.max().item():.3g}], outside the bounds "
                f"[{lo:g}, {hi:g}]; pass raw pixels and put normalisation inside the model "
                "(robustlab.models.Normalize), or set the threat model's bounds"
            )

    def to_dict(self) -> dict:
        return {"norm": self.norm, "eps": self.eps, "bounds": list(self.bounds)}
