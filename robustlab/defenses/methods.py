"""Adversarial training methods as "make the training input + loss" steps for :func:`robustlab.defenses.train`.

Every inner attack is a :class:`GradientAttack` at a :class:`ThreatModel` (gradients w.r.t. the input only).
The noisy single-step methods are composed, not re-implemented: NoiseAug and N-FGSM call FGSM with the
*noisy* image as its centre, so FGSM's projection is onto the eps-ball around the noisy point (NoiseAug), and
with step = eps that projection is a no-op, leaving only the clip to the bounds (N-FGSM).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks.base import GradientAttack, frozen_parameters
from robustlab.attacks.presets import FGSM, PGD
from robustlab.defenses.loop import SeededMethod
from robustlab.distributed import unwrap
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel

NOISE_KINDS = ("uniform", "gaussian")


class TrainingMethod(SeededMethod):
    """Base of the methods: the run-seeded generator of :class:`SeededMethod` and the cross-entropy loss on
    :meth:`training_input`. Subclasses override :meth:`training_input` (and ``extra_loss`` if needed)."""

    name = "standard"

    def __init__(self, threat: ThreatModel | None = None, alpha: float | None = None) -> None:
        self.threat = threat
        self.alpha = alpha

    def config(self) -> dict[str, Any]:
        """The method's settings, for reports."""
        return {"method": self.name, "alpha": self.alpha, "threat": self.threat.to_dict() if self.threat else None}

    def _uniform(self, x: Tensor, scale: float) -> Tensor:
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
        stats = {"train_acc": (logits.argmax(1) == y).float().mean().item()}
        extra, extra_stats = self.extra_loss(unwrap(model), x, y)
        if extra is not None:
            stats["ce"] = loss.item()
            loss = loss + extra
        return loss, {**stats, **extra_stats}


class Standard(TrainingMethod):
    """Standard (clean) training: the baseline for time ratios."""

    name = "standard"


class _Adversarial(TrainingMethod):
    """A method with a threat model and a step size alpha (default ``default_alpha * eps``)."""

    default_alpha = 1.25

    def __init__(self, threat: ThreatModel, alpha: float | None = None) -> None:
        if threat is None:
            raise RobustlabError(f"method {self.name} needs a threat model (--eps)")
        if alpha is not None and not alpha > 0:
            raise RobustlabError(f"alpha must be > 0, got {alpha}")
        super().__init__(threat, alpha if alpha is not None else self.default_alpha * threat.eps)


class FGSMTraining(_Adversarial):
    """FGSM AT from a zero initialisation (Goodfellow et al. 2015): prone to catastrophic overfitting."""

    name = "fgsm"
    default_alpha = 1.0

    def training_input(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return FGSM(step_size=self.alpha, evaluate=False)(model, x, y, self.threat).x_adv


class FGSMRS(_Adversarial):
    """FGSM with a uniform random start in the eps-ball, step alpha = 1.25 eps, projected (Wong et al. 2020)."""

    name = "fgsm-rs"

    def training_input(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        attack = GradientAttack(
            steps=1, step_size=self.alpha, random_start=True, seed=self.attack_seed(x.device), evaluate=False
        )
        return attack(model, x, y, self.threat).x_adv


class NoiseAug(_Adversarial):
    """NoiseAug (arXiv 2202.05488): x_n = clip(x + sigma * eps * noise), then FGSM from x_n with step alpha,
    projected onto the eps-ball around x_n; noise is U(-1, 1) or N(0, 1)."""

    name = "noiseaug"

    def __init__(
        self, threat: ThreatModel, alpha: float | None = None, noise: str = "uniform", noise_sigma: float = 2.0
    ) -> None:
        super().__init__(threat, alpha)
        if noise not in NOISE_KINDS:
            raise RobustlabError(f"unknown noise {noise!r}; choose one of: {', '.join(NOISE_KINDS)}")
        if noise_sigma < 0:
            raise RobustlabError(f"noise sigma must be >= 0, got {noise_sigma}")
        self.noise, self.noise_sigma = noise, float(noise_sigma)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "noise": self.noise, "noise_sigma": self.noise_sigma}

    def noisy(self, x: Tensor) -> Tensor:
        """The noise-augmented image, clipped to the bounds."""
        scale = self.noise_sigma * self.threat.eps
        if self.noise == "uniform":
            return self.threat.clip(x + self._uniform(x, scale))
        gen = self.generator(x.device)
        return self.threat.clip(x + scale * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype))

    def training_input(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return FGSM(step_size=self.alpha, evaluate=False)(model, self.noisy(x), y, self.threat).x_adv


class NFGSM(_Adversarial):
    """N-FGSM (de Jorge et al. 2022): eta ~ U(-k eps, k eps), one FGSM step of size eps from clip(x + eta),
    no projection onto the eps-ball around x, only clipping to the bounds."""

    name = "n-fgsm"
    default_alpha = 1.0

    def __init__(self, threat: ThreatModel, alpha: float | None = None, k: float = 2.0) -> None:
        super().__init__(threat, alpha)
        if self.alpha > threat.eps + 1e-12:
            raise RobustlabError(f"n-fgsm steps at most eps ({threat.eps:g}) from the noisy point; got alpha {alpha}")
        self.k = float(k)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "k": self.k}

    def training_input(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        x_noisy = self.threat.clip(x + self._uniform(x, self.k * self.threat.eps))
        # a step of length <= eps from x_noisy never leaves its eps-ball: FGSM's projection only clips to bounds
        return FGSM(step_size=self.alpha, evaluate=False)(model, x_noisy, y, self.threat).x_adv


class GradAlign(_Adversarial):
    """FGSM from zero (alpha = 1.25 eps) + lambda * (1 - cos(grad at x, grad at x + U(-eps, eps)))
    (Andriushchenko & Flammarion 2020); the regulariser needs double backpropagation."""

    name = "gradalign"

    def __init__(self, threat: ThreatModel, alpha: float | None = None, lam: float = 0.2) -> None:
        super().__init__(threat, alpha)
        self.lam = float(lam)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "lambda": self.lam}

    def training_input(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return FGSM(step_size=self.alpha, evaluate=False)(model, x, y, self.threat).x_adv

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


class PGDAT(_Adversarial):
    """PGD-AT (Madry et al. 2018): PGD-``steps`` with a random start and step eps/4."""

    name = "pgd"
    default_alpha = 0.25

    def __init__(self, threat: ThreatModel, alpha: float | None = None, steps: int = 10) -> None:
        super().__init__(threat, alpha)
        self.steps = int(steps)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "steps": self.steps}

    def training_input(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        attack = PGD(steps=self.steps, step_size=self.alpha, seed=self.attack_seed(x.device), evaluate=False)
        return attack(model, x, y, self.threat).x_adv


METHODS: dict[str, type[TrainingMethod]] = {
    "standard": Standard,
    "fgsm": FGSMTraining,
    "fgsm-rs": FGSMRS,
    "noiseaug": NoiseAug,
    "n-fgsm": NFGSM,
    "gradalign": GradAlign,
    "pgd": PGDAT,
}


def make_method(
    name: str, threat: ThreatModel | None = None, alpha: float | None = None, **kwargs: Any
) -> TrainingMethod:
    """A training method by name; ``kwargs`` are method options (``noise``, ``noise_sigma``, ``k``, ``lam``,
    ``steps``); ``None`` values fall back to the defaults."""
    key = name.lower().replace("_", "-")
    key = {"nfgsm": "n-fgsm", "fgsmrs": "fgsm-rs", "pgd-at": "pgd", "pgdat": "pgd", "noise-aug": "noiseaug"}.get(
        key, key
    )
    if key not in METHODS:
        raise RobustlabError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    cls = METHODS[key]
    if cls is Standard:
        return Standard(threat)
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "threat", "alpha"}
    unknown = set(kwargs) - accepted
    if unknown:
        raise RobustlabError(f"method {key} does not take {', '.join(sorted(unknown))}")
    return cls(threat, alpha, **kwargs)
