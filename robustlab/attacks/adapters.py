"""Adapters that make AutoAttack (the ``pyautoattack`` package) and torchattacks speak our attack protocol.

Both are called like our own attacks, ``attack(model, x, y, threat) -> AttackResult``, so the evaluator runs
them only on the samples still robust and reports them like any other attack. Both packages draw from (and
AutoAttack reseeds) the global RNG and switch model modes; the adapters seed them from their own ``seed`` and
run them under :func:`~robustlab.attacks.protocol.untouched`, so the model's modes and buffers and the caller's
random state come back unchanged.
"""

from __future__ import annotations

import inspect
import logging
import numbers
import re
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attacks import options
from robustlab.attacks.protocol import (
    AttackBase,
    AttackResult,
    check_labels,
    frozen_parameters,
    model_logits,
    untouched,
)
from robustlab.criteria import Misclassified
from robustlab.errors import RobustlabError
from robustlab.losses import cross_entropy
from robustlab.threat import ThreatModel

log = logging.getLogger(__name__)

AUTOATTACK_VERSIONS = ("standard", "plus", "rand")
AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
_AA_NORMS = {"linf": "Linf", "l2": "L2"}


def _check_batch(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> None:
    """What every attack refuses: inputs outside the bounds or not finite, labels out of the model's range."""
    if x.dim() < 2 or x.shape[0] != y.shape[0]:
        raise RobustlabError(
            f"inputs {tuple(x.shape)} and labels {tuple(y.shape)} do not match; give x (N, ...), y (N,)"
        )
    threat.check_inputs(x)
    if threat.bounds != (0.0, 1.0):
        raise RobustlabError(
            f"AutoAttack and torchattacks assume inputs in [0, 1], but the threat model's bounds are {threat.bounds}; "
            "rescale the inputs inside the model (robustlab.models.Normalize)"
        )
    with torch.no_grad():
        check_labels(y, model_logits(model, x[:1]).shape[1])


def _result(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, threat: ThreatModel, info: dict) -> AttackResult:
    """Project onto the threat model, evaluate once, and package as an :class:`AttackResult`."""
    x_adv = threat.project(x_adv.detach().to(x.device, x.dtype), x)
    with torch.no_grad():
        logits = model_logits(model, x_adv)
    return AttackResult(x_adv, Misclassified()(logits, y), cross_entropy(logits, y), logits, info)


class AutoAttack(AttackBase):
    """AutoAttack (Croce & Hein 2020) through the real ``pyautoattack`` package.

    Args:
        version: ``standard``, ``plus`` or ``rand`` (the package's presets), or ``custom`` with ``attacks``.
        attacks: a list of the package's attacks (apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square); implies custom.
        seed: the seed given to the package (recorded in reports; the package's own default is the clock).
        batch_size: the package's batch size; keep it >= the evaluator's batch size to reproduce a direct
            ``run_standard_evaluation`` on the same samples exactly.
        n_iter, n_restarts, n_target_classes, n_queries: optional overrides of the package's settings
            (APGD/FAB iterations and restarts, targets of apgd-t/fab-t, Square queries), for cheaper runs.

    The package chains its attacks itself (each runs on what the previous left robust), so one call of this
    adapter is exactly one ``run_standard_evaluation`` on the samples the evaluator hands it.
    """

    name = "autoattack"

    def __init__(
        self,
        version: str = "standard",
        attacks: Sequence[str] | None = None,
        seed: int = 0,
        batch_size: int = 500,
        n_iter: int | None = None,
        n_restarts: int | None = None,
        n_target_classes: int | None = None,
        n_queries: int | None = None,
    ) -> None:
        if attacks is not None:
            attacks = [a.strip().lower() for a in attacks if a.strip()]
            unknown = [a for a in attacks if a not in AUTOATTACK_ATTACKS]
            if unknown or not attacks:
                raise RobustlabError(
                    f"unknown AutoAttack attack(s) {unknown or attacks}; choose from {', '.join(AUTOATTACK_ATTACKS)}"
                )
            version = "custom"
        elif version not in AUTOATTACK_VERSIONS:
            raise RobustlabError(
                f"unknown AutoAttack version {version!r}; choose {', '.join(AUTOATTACK_VERSIONS)} or a list of "
                f"attacks ({', '.join(AUTOATTACK_ATTACKS)})"
            )
        self.version = version
        self.attacks = list(attacks) if attacks is not None else None
        self.seed = options.seed(seed)
        self.batch_size = options.whole("batch_size", batch_size)
        self.overrides = {
            name: None if value is None else options.whole(name, value)
            for name, value in [
                ("n_iter", n_iter),
                ("n_restarts", n_restarts),
                ("n_target_classes", n_target_classes),
                ("n_queries", n_queries),
            ]
        }

    @classmethod
    def from_variant(cls, variant: str | None = None, **kwargs: Any) -> AutoAttack:
        """``autoattack:VARIANT`` specs: a version (``plus``) or a comma-separated list of the package's attacks."""
        names = [v.strip().lower() for v in (variant or "standard").split(",") if v.strip()]
        if len(names) == 1 and names[0] not in AUTOATTACK_ATTACKS:
            return cls(version=names[0], **kwargs)
        return cls(attacks=names, **kwargs)

    def config(self) -> dict:
        """The attack's configuration, for reports."""
        import pyautoattack

        return {
            "attack": self.name,
            "version": self.version,
            "attacks": self.attacks,
            "seed": self.seed,
            "batch_size": self.batch_size,
            **{k: v for k, v in self.overrides.items() if v is not None},
            "package": f"pyautoattack {getattr(pyautoattack, '__version__', '?')}",
        }

    def build(self, model: nn.Module, threat: ThreatModel, device: torch.device | str) -> Any:
        """The configured ``pyautoattack.AutoAttack`` object (what a direct run would construct)."""
        from pyautoattack import AutoAttack as PackageAutoAttack

        kwargs: dict[str, Any] = {"norm": _AA_NORMS[threat.norm], "eps": threat.eps, "seed": self.seed}
        if self.attacks is not None:
            kwargs["attacks"] = self.attacks
        aa = PackageAutoAttack(model, device=device, version=self.version, **kwargs)
        apply_overrides(aa, **self.overrides)
        return aa

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        """Run ``run_standard_evaluation`` on ``(x, y)``; success = misclassified at the returned input."""
        if target is not None:
            raise RobustlabError("the AutoAttack adapter is untargeted; use its apgd-t/fab-t attacks instead")
        start = time.perf_counter()
        with frozen_parameters(model), untouched(model, x.device):
            _check_batch(model, x, y, threat)
            aa = self.build(model, threat, x.device)
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=self.batch_size)
            info = {**self.config(), "attacks_run": list(aa.attacks_to_run), "time_s": time.perf_counter() - start}
            return _result(model, x, x_adv, y, threat, info)


def apply_overrides(
    aa: Any,
    n_iter: int | None = None,
    n_restarts: int | None = None,
    n_target_classes: int | None = None,
    n_queries: int | None = None,
) -> None:
    """Set iterations/restarts/targets/queries on a ``pyautoattack.AutoAttack`` (None keeps the package's); a
    query budget of Square's also rescales its p-schedule to that budget (the package builds its Square with the
    schedule of 10000 queries, so a shorter run would stop with squares 16x too large)."""
    if n_iter is not None:
        aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = int(n_iter)
    if n_restarts is not None:
        aa.apgd.n_restarts = aa.fab.n_restarts = int(n_restarts)
    if n_target_classes is not None:
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = int(n_target_classes)
    if n_queries is not None:
        aa.square.n_queries = int(n_queries)
        aa.square.rescale_schedule = True


class TorchattacksAttack(AttackBase):
    """Any ``torchattacks`` attack by class name (``CW``, ``Square``, ``DeepFool``, ``APGD``, ...).

    The attack is built per call with the model and, where its constructor takes them, the threat model's
    ``eps`` and ``norm``; ``kwargs`` go to the constructor (checked against the type of its defaults). The output
    is projected onto the threat model (minimum-norm attacks such as CW or DeepFool are thus judged inside the
    eps-ball) and re-evaluated. The global RNG it draws from is seeded from ``seed`` inside a fork, so two calls
    with one seed agree and the caller's random state is untouched.
    """

    def __init__(self, attack_name: str, seed: int = 0, **kwargs: Any) -> None:
        import torchattacks

        classes = {n.lower(): n for n in dir(torchattacks) if inspect.isclass(getattr(torchattacks, n))}
        key = attack_name.lower()
        if key not in classes or key in ("attack", "multiattack"):
            choices = sorted(n for n in classes.values() if n not in ("Attack", "MultiAttack"))
            raise RobustlabError(f"torchattacks has no attack {attack_name!r}; choose one of: {', '.join(choices)}")
        self.attack_name = classes[key]
        self.cls = getattr(torchattacks, self.attack_name)
        signature = inspect.signature(self.cls.__init__).parameters
        self.params = set(signature)
        self.seed = options.seed(seed)
        if "seed" in self.params:
            kwargs.setdefault("seed", self.seed)
        unknown = set(kwargs) - self.params
        if unknown:
            raise RobustlabError(
                f"torchattacks.{self.attack_name} takes no argument(s) {sorted(unknown)}; "
                f"it takes {sorted(self.params - {'self', 'model'})}"
            )
        for key, value in kwargs.items():
            _check_like_default(f"torchattacks.{self.attack_name} option {key}", value, signature[key].default)
        self.kwargs = kwargs
        self.name = f"torchattacks:{self.attack_name}"

    def config(self) -> dict:
        """The attack's configuration, for reports."""
        import torchattacks

        return {
            "attack": self.name,
            "seed": self.seed,
            **self.kwargs,
            "package": f"torchattacks {torchattacks.__version__}",
        }

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        """Run the torchattacks attack on ``(x, y)`` and judge its output inside the threat model."""
        if target is not None:
            raise RobustlabError("the torchattacks adapter is untargeted here; use robustlab's Targeted attacks")
        start = time.perf_counter()
        kwargs = dict(self.kwargs)
        if "eps" in self.params:
            kwargs.setdefault("eps", threat.eps)
        if "norm" in self.params:
            kwargs.setdefault("norm", _AA_NORMS[threat.norm])
        elif "eps" in self.params and threat.norm != "linf" and not self.attack_name.endswith("L2"):
            log.warning("torchattacks.%s is an Linf attack; its output is projected onto the L2 ball", self.cls)
        with frozen_parameters(model), untouched(model, x.device):
            _check_batch(model, x, y, threat)
            attack = self.cls(model, **kwargs)
            if model.training:  # torchattacks switches models to eval mode otherwise; attack in the caller's mode
                attack.set_model_training_mode(model_training=True, batchnorm_training=True, dropout_training=True)
            _seed_global_rng(self.seed, x.device)
            x_adv = attack(x, y)
            info = {**self.config(), **kwargs, "time_s": time.perf_counter() - start}
            return _result(model, x, x_adv, y, threat, info)


_COUNT = re.compile(r"^n_|step|iter|quer|restart|seed")  # int options that count (CW's c=1 is a float in truth)


def _check_like_default(what: str, value: Any, default: Any) -> None:
    """A torchattacks option must have the type of its default (a whole number for an int, a number for a float,
    a bool for a bool), so ``eps=abc`` fails here and not after the attack has started."""
    if isinstance(default, bool):
        options.flag(what, value)
    elif isinstance(default, numbers.Integral) and _COUNT.search(what.rsplit(" ", 1)[-1]):
        options.whole(what, value, minimum=0)
    elif isinstance(default, numbers.Real) and not (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        raise RobustlabError(f"{what} must be a number like its default {default!r}, got {value!r}")
    elif isinstance(default, numbers.Real):
        options.number(what, value)


def _seed_global_rng(seed: int, device: torch.device) -> None:
    """Seed the global RNG a package draws from (call it inside :func:`untouched`, which restores it)."""
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


__all__ = [
    "AUTOATTACK_ATTACKS",
    "AUTOATTACK_VERSIONS",
    "AutoAttack",
    "TorchattacksAttack",
    "apply_overrides",
]
