"""FGSM, I-FGSM, PGD and MI-FGSM: named configurations of :class:`GradientAttack`."""

from __future__ import annotations

from typing import Any

from robustlab.attacks.base import GradientAttack
from robustlab.errors import RobustlabError


class FGSM(GradientAttack):
    """Fast gradient sign method: one step of size eps from x (Goodfellow et al. 2015)."""

    name = "fgsm"
    rel_step_size = 1.0

    def __init__(self, loss: str = "ce", step_size: float | None = None, seed: int = 0, **kwargs: Any) -> None:
        if kwargs.setdefault("steps", 1) != 1:
            raise RobustlabError("fgsm takes exactly one step; for several steps use ifgsm or pgd")
        if kwargs.get("restarts", 1) != 1:
            raise RobustlabError("fgsm has no random start, so restarts are meaningless; use pgd --restarts")
        super().__init__(step_size=step_size, loss=loss, seed=seed, **kwargs)


class IFGSM(GradientAttack):
    """I-FGSM / BIM: ``steps`` steps of size eps/steps from x, projected each step (Kurakin et al. 2017)."""

    name = "ifgsm"

    def __init__(self, steps: int = 10, step_size: float | None = None, **kwargs: Any) -> None:
        super().__init__(steps=steps, step_size=step_size, **kwargs)
        self.rel_step_size = 1.0 / self.steps


class PGD(GradientAttack):
    """Projected gradient descent with a uniform random start and restarts (Madry et al. 2018).

    The default step is 2.5 * eps / steps, Madry et al.'s choice, which can cross the ball and come back.
    L2 random starts are uniform in the ball (almost on its surface in 784 dimensions), as foolbox's and ART's:
    on zoo:fmnist-cnn-pgdat at L2 eps 2.0 (500 images) PGD-10 leaves 17.0 % robust from it but 49.8 % from
    the short start of radius eps * U (``l2_start_radius="uniform"``, torchattacks' choice), whose iterates stay
    where the model's gradient near x misleads. Elsewhere the ball start costs up to 1.4 points at PGD-10
    (zoo:fmnist-cnn, eps 0.5: 54.0 % against 52.6 %), a price for not missing the 32.
    """

    name = "pgd"

    def __init__(self, steps: int = 10, step_size: float | None = None, restarts: int = 1, **kwargs: Any) -> None:
        kwargs.setdefault("random_start", True)
        super().__init__(steps=steps, step_size=step_size, restarts=restarts, **kwargs)
        self.rel_step_size = 2.5 / self.steps


class MIFGSM(GradientAttack):
    """Momentum I-FGSM (Dong et al. 2018): steps on the sign of the L1-normalised accumulated gradient."""

    name = "mifgsm"

    def __init__(self, steps: int = 10, step_size: float | None = None, momentum: float = 1.0, **kwargs: Any) -> None:
        super().__init__(steps=steps, step_size=step_size, momentum=momentum, **kwargs)
        self.rel_step_size = 1.0 / self.steps


__all__ = ["FGSM", "IFGSM", "MIFGSM", "PGD"]
