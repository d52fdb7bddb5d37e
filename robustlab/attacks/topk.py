"""The top-k attack (Zhang et al., CVPR 2022): push the true class out of the top k, not just off rank 1.

:class:`TopK` is a configuration of the one gradient loop (I-FGSM, PGD or MI-FGSM) with the normalized CE
loss and the top-k success criterion :class:`~robustlab.criteria.Misclassified` ``(k)``, so early stopping
and restarts mean "out of the top k". Called with a ``target`` it drives the target to rank 1 while pushing
the true class down the ranking (loss :func:`~robustlab.losses.topk_targeted`, criterion
``TargetedMisclassified() & Misclassified(k)``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from robustlab.attacks import options
from robustlab.attacks.presets import IFGSM, MIFGSM, PGD
from robustlab.attacks.protocol import AttackBase, AttackResult
from robustlab.criteria import Misclassified, TargetedMisclassified
from robustlab.errors import RobustlabError
from robustlab.losses import LossFn
from robustlab.threat import ThreatModel

BASES = {"ifgsm": IFGSM, "pgd": PGD, "mifgsm": MIFGSM}


class TopK(AttackBase):
    """Top-k attack: I-FGSM / PGD / MI-FGSM with the normalized CE loss and a top-k success criterion.

    Args:
        k: success means the true class is out of the top k (targeted: the target is top-1 as well).
        base: the iterative attack it configures: ``ifgsm``, ``pgd`` or ``mifgsm``.
        loss: untargeted loss (default ``normalized-ce``; ``ce``/``cw`` for comparison at equal budget).
        targeted_loss: loss of targeted calls (default ``topk-targeted``, which takes the target and the true
            class); an ordinary loss (e.g. ``ce``) is applied to the target alone.
        early_stop: stop updating a sample once it is out of the top k. Off by default: top-k ASR for
            several k is measured after a fixed number of steps, as in the paper.
        **kwargs: the base attack's options (``steps``, ``step_size``, ``restarts``, ``momentum``,
            ``diversity_prob``, ``seed``, ...).
    """

    options_from = PGD  # its **kwargs are the base attack's options (robustlab.registry.signature_options)

    def __init__(
        self,
        k: int = 1,
        base: str = "ifgsm",
        loss: str | LossFn = "normalized-ce",
        targeted_loss: str | LossFn = "topk-targeted",
        early_stop: bool = False,
        **kwargs: Any,
    ) -> None:
        k = options.whole("k", k)
        key = str(base).lower().replace("-", "").replace("_", "")
        if key not in BASES:
            raise RobustlabError(f"TopK builds on {', '.join(BASES)}, not {base!r}")
        self.k = int(k)
        self.base = key
        self.untargeted = BASES[key](loss=loss, criterion=Misclassified(self.k), early_stop=early_stop, **kwargs)
        criterion = TargetedMisclassified() & Misclassified(self.k)
        self.targeted = BASES[key](loss=targeted_loss, criterion=criterion, early_stop=early_stop, **kwargs)
        self.name = f"topk-{key}"

    def config(self) -> dict:
        """The attack's configuration, for reports."""
        return {**self.untargeted.config(), "attack": self.name, "k": self.k, "targeted_loss": self.targeted.loss_name}

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        """Untargeted: push ``y`` out of the top k. Targeted: ``target`` to rank 1 and ``y`` out of the top k."""
        if target is None:
            result = self.untargeted(model, x, y, threat)
        else:
            if target.shape != y.shape:
                raise RobustlabError(f"targets of shape {tuple(target.shape)} do not match labels {tuple(y.shape)}")
            if bool((target == y).any()):
                raise RobustlabError("a target equals the true class; choose targets different from the labels")
            result = self.targeted(model, x, y, threat, target=target)
            result.info["target"] = target
        result.info.update(attack=self.name, k=self.k)
        return result


__all__ = ["BASES", "TopK"]
