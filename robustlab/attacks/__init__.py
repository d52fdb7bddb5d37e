"""Attacks: one gradient loop (:class:`GradientAttack`) and its named configurations."""

from robustlab.attacks.base import AttackResult, GradientAttack, frozen_parameters, model_logits
from robustlab.attacks.presets import ATTACKS, FGSM, IFGSM, MIFGSM, PGD, make_attack

__all__ = [
    "ATTACKS",
    "FGSM",
    "IFGSM",
    "MIFGSM",
    "PGD",
    "AttackResult",
    "GradientAttack",
    "frozen_parameters",
    "make_attack",
    "model_logits",
]

from robustlab.attacks.targeted import Targeted, choose_targets  # noqa: E402

__all__ += ["Targeted", "choose_targets"]

from robustlab.attacks.adapters import AutoAttack, TorchattacksAttack  # noqa: E402
from robustlab.attacks.registry import attack_from_spec, split_specs  # noqa: E402

__all__ += ["AutoAttack", "TorchattacksAttack", "attack_from_spec", "split_specs"]

from robustlab.attacks.topk import TopK  # noqa: E402
from robustlab.attacks.transfer import Ensemble, TransferAttack  # noqa: E402

__all__ += ["Ensemble", "TopK", "TransferAttack"]
