"""Adversarial training methods: supervised "make the training input + loss" steps for the one training loop.

Every inner attack is a gradient attack at a :class:`ThreatModel` (gradients w.r.t. the input only), asked for
just ``x_adv`` (``attack.perturb``: no forward pass at ``x_adv``). The noisy single-step methods are composed, not
re-implemented: NoiseAug and N-FGSM call FGSM with the *noisy* image as its centre, so FGSM's projection is onto the
eps-ball around the noisy point (NoiseAug), and with step = eps that projection is a no-op, leaving only the clip to
the bounds (N-FGSM; a larger N-FGSM step is taken in a ball of its own radius, so it too is only clipped).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks.base import GradientAttack, frozen_parameters
from robustlab.attacks.presets import FGSM, PGD
from robustlab.distributed import unwrap
from robustlab.errors import RobustlabError
from robustlab.registry import Registry
from robustlab.threat import ThreatModel
from robustlab.training.method import Method, check_number

NOISE_KINDS = ("uniform", "gaussian")


class AdversarialMethod(Method):
    """Cross-entropy on :meth:`training_input` (plus :meth:`extra_loss`), the base of every supervised method.

    ``step_size`` defaults to ``default_step_size * eps``; a method without a default step (standard training)
    needs no threat model. Subclasses override :meth:`training_input` (and ``extra_loss`` if needed).
    """

    name = "standard"
    default_step_size: float | None = None  # in units of eps

    def __init__(self, threat: ThreatModel | None = None, step_size: float | None = None) -> None:
        adversarial = self.default_step_size is not None
        if adversarial and threat is None:
            raise RobustlabError(f"method {self.name} needs a threat model (--eps)")
        check_number("the step size (--step-size)", step_size, strict=True)
        self.threat = threat
        self.step_size = step_size if step_size is not None or not adversarial else self.default_step_size * threat.eps

    def config(self) -> dict[str, Any]:
        """The method's settings, for reports."""
        threat = self.threat.to_dict() if self.threat else None
        return {"method": self.name, "step_size": self.step_size, "threat": threat}

    def uniform(self, x: Tensor, scale: float) -> Tensor:
        """U(-scale, scale) noise of ``x``'s shape from this rank's generator."""
        gen = self.generator(x.device)
        return (2 * torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) - 1) * scale

    def training_input(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The input the model is trained on (``model`` is the unwrapped module)."""
        return x

    def extra_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor | None, dict[str, float]]:
        """A method-specific regulariser added to the training loss (GradAlign)."""
        return None, {}

    def training_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy at :meth:`training_input` (plus :meth:`extra_loss`); stats: accuracy on that input."""
        x_train = self.training_input(unwrap(model), x, y).detach()
        logits = model(x_train)
        loss = F.cross_entropy(logits, y)
        stats = {"accuracy": (logits.argmax(1) == y).float().mean().item()}
        extra, extra_stats = self.extra_loss(unwrap(model), x, y)
        if extra is not None:
            stats["ce"] = loss.item()
            loss = loss + extra
        return loss, {**stats, **extra_stats}


class Standard(AdversarialMethod):
    """Standard (clean) training: the baseline for time ratios."""

    name = "standard"


class FGSMTraining(AdversarialMethod):
    """FGSM AT from a zero initialisation (Goodfellow et al. 2015): prone to catastrophic overfitting."""

    name = "fgsm"
    default_step_size = 1.0

    def training_input(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return FGSM(step_size=self.step_size).perturb(model, x, y, self.threat)


class FGSMRS(AdversarialMethod):
    """FGSM with a uniform random start in the eps-ball, step 1.25 eps, projected (Wong et al. 2020)."""

    name = "fgsm-rs"
    default_step_size = 1.25

    def training_input(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        attack = GradientAttack(steps=1, step_size=self.step_size, random_start=True, seed=self.attack_seed(x.device))
        return attack.perturb(model, x, y, self.threat)


class NoiseAug(AdversarialMethod):
    """NoiseAug (arXiv 2202.05488): x_n = clip(x + sigma * eps * noise), then FGSM from x_n with the step size,
    projected onto the eps-ball around x_n; noise is U(-1, 1) or N(0, 1)."""

    name = "noiseaug"
    default_step_size = 1.25

    def __init__(
        self, threat: ThreatModel, step_size: float | None = None, noise: str = "uniform", noise_sigma: float = 2.0
    ) -> None:
        super().__init__(threat, step_size)
        if noise not in NOISE_KINDS:
            raise RobustlabError(f"unknown noise {noise!r}; choose one of: {', '.join(NOISE_KINDS)}")
        check_number("the noise sigma (--noise-sigma)", noise_sigma)
        self.noise, self.noise_sigma = noise, float(noise_sigma)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "noise": self.noise, "noise_sigma": self.noise_sigma}

    def noisy(self, x: Tensor) -> Tensor:
        """The noise-augmented image, clipped to the bounds."""
        scale = self.noise_sigma * self.threat.eps
        if self.noise == "uniform":
            return self.threat.clip(x + self.uniform(x, scale))
        gen = self.generator(x.device)
        return self.threat.clip(x + scale * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype))

    def training_input(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return FGSM(step_size=self.step_size).perturb(model, self.noisy(x), y, self.threat)


class NFGSM(AdversarialMethod):
    """N-FGSM (de Jorge et al. 2022): eta ~ U(-m eps, m eps) with m the noise multiple, one FGSM step of size alpha
    (default eps) from clip(x + eta), no projection onto any eps-ball, only clipping to the bounds (as the official
    ``train.py`` without ``--clip``: a step larger than eps is taken in full)."""

    name = "n-fgsm"
    default_step_size = 1.0

    def __init__(self, threat: ThreatModel, step_size: float | None = None, noise_multiple: float = 2.0) -> None:
        super().__init__(threat, step_size)
        check_number("the noise multiple (--noise-multiple)", noise_multiple)
        self.noise_multiple = float(noise_multiple)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "noise_multiple": self.noise_multiple}

    def training_input(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        x_noisy = self.threat.clip(x + self.uniform(x, self.noise_multiple * self.threat.eps))
        # FGSM projects onto a ball around x_noisy: one of radius max(eps, step) never binds, leaving only the clip
        threat = self.threat if self.step_size <= self.threat.eps else self.threat.with_eps(self.step_size)
        return FGSM(step_size=self.step_size).perturb(model, x_noisy, y, threat)


class GradAlign(AdversarialMethod):
    """FGSM from zero (step 1.25 eps) + lambda * (1 - cos(grad at x, grad at x + U(-eps, eps)))
    (Andriushchenko & Flammarion 2020); the regulariser needs double backpropagation."""

    name = "gradalign"
    default_step_size = 1.25

    def __init__(self, threat: ThreatModel, step_size: float | None = None, lam: float = 0.2) -> None:
        super().__init__(threat, step_size)
        check_number("the GradAlign lambda (--gradalign-lambda)", lam)
        self.lam = float(lam)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "lambda": self.lam}

    def training_input(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return FGSM(step_size=self.step_size).perturb(model, x, y, self.threat)

    def _input_grad(self, model: nn.Module, x: Tensor, y: Tensor, create_graph: bool) -> Tensor:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x), y)
            (grad,) = torch.autograd.grad(loss, x, create_graph=create_graph)
        return grad

    def extra_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor | None, dict[str, float]]:
        with frozen_parameters(model):
            g1 = self._input_grad(model, x, y, create_graph=False)
        x_rand = self.threat.random_start(x, self.generator(x.device))
        g2 = self._input_grad(model, x_rand, y, create_graph=True)  # parameter gradients flow through g2
        cos = F.cosine_similarity(g1.flatten(1), g2.flatten(1), dim=1, eps=1e-12)
        reg = self.lam * (1 - cos).mean()
        return reg, {"grad_cos": cos.mean().item(), "gradalign_reg": reg.item()}


class PGDAT(AdversarialMethod):
    """PGD-AT (Madry et al. 2018): PGD-``steps`` with a random start and step eps/4."""

    name = "pgd"
    default_step_size = 0.25

    def __init__(self, threat: ThreatModel, step_size: float | None = None, steps: int = 10) -> None:
        super().__init__(threat, step_size)
        self.steps = int(steps)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "steps": self.steps}

    def training_input(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        attack = PGD(steps=self.steps, step_size=self.step_size, seed=self.attack_seed(x.device))
        return attack.perturb(model, x, y, self.threat)


# The training methods: one line each (a new method is one small class plus one line).
METHODS: Registry[type[AdversarialMethod]] = Registry("method")
METHODS.register("standard", Standard)
METHODS.register("fgsm", FGSMTraining)
METHODS.register("fgsm-rs", FGSMRS, aliases=("fgsmrs",))
METHODS.register("noiseaug", NoiseAug, aliases=("noise-aug",))
METHODS.register("n-fgsm", NFGSM, aliases=("nfgsm",))
METHODS.register("gradalign", GradAlign)
METHODS.register("pgd", PGDAT, aliases=("pgd-at", "pgdat"))


def make_method(
    name: str, threat: ThreatModel | None = None, step_size: float | None = None, **kwargs: Any
) -> AdversarialMethod:
    """A training method by name; ``kwargs`` are method options (``noise``, ``noise_sigma``, ``noise_multiple``,
    ``lam``, ``steps``: checked against its constructor); ``None`` values fall back to the defaults."""
    cls = METHODS.get(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    METHODS.check_options(cls.name, kwargs)
    return cls(threat, step_size, **kwargs)


__all__ = ["METHODS", "NOISE_KINDS", "AdversarialMethod", "make_method"]
