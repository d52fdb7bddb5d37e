"""Attacks: one protocol (:class:`Attack`), one gradient loop (:class:`GradientAttack`) and its named
configurations, the top-k, targeted and transfer attacks, and adapters for AutoAttack and torchattacks."""

from robustlab.attacks.adapters import AutoAttack, TorchattacksAttack
from robustlab.attacks.base import GradientAttack
from robustlab.attacks.presets import FGSM, IFGSM, MIFGSM, PGD
from robustlab.attacks.protocol import (
    Attack,
    AttackBase,
    AttackResult,
    as_attack,
    check_labels,
    frozen_parameters,
    model_logits,
    untouched,
)
from robustlab.attacks.registry import (
    attack_entry,
    attack_from_spec,
    attack_help,
    attack_names,
    make_attack,
    register,
    split_specs,
    unregister,
)
from robustlab.attacks.targeted import Targeted, choose_targets
from robustlab.attacks.topk import TopK
from robustlab.attacks.transfer import Ensemble, TransferAttack

__all__ = [
    "FGSM",
    "IFGSM",
    "MIFGSM",
    "PGD",
    "Attack",
    "AttackBase",
    "AttackResult",
    "AutoAttack",
    "Ensemble",
    "GradientAttack",
    "Targeted",
    "TopK",
    "TorchattacksAttack",
    "TransferAttack",
    "attack_entry",
    "attack_from_spec",
    "attack_help",
    "attack_names",
    "as_attack",
    "check_labels",
    "choose_targets",
    "frozen_parameters",
    "make_attack",
    "model_logits",
    "register",
    "split_specs",
    "unregister",
    "untouched",
]
