"""The one attack registry: it feeds the spec parser, every subcommand's attack choice and the ``--help`` texts.

A new attack is one small file plus one :func:`register` line. Specs, as the command line writes them
(case-insensitive)::

    fgsm | ifgsm | bim | pgd | mifgsm | topk     robustlab's gradient attacks
    NAME+LOSS                                    the same with another loss: pgd+cw, ifgsm+normalized-ce
    apgd | apgd-t | aa                           native APGD, APGD-T, and AutoAttack standard on them: apgd+dlr
    autoattack[:standard|plus|rand]              AutoAttack through pyautoattack (default: standard)
    autoattack:apgd-ce,apgd-t                    AutoAttack with a custom list of its attacks
    torchattacks:NAME                            any torchattacks attack: torchattacks:CW, torchattacks:Square

Any spec may end with options in parentheses, passed to the attack's constructor:
``pgd+cw(steps=50,restarts=5)``, ``autoattack:apgd-ce,apgd-t(n_iter=20)``, ``torchattacks:CW(c=1,steps=100)``.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robustlab.attacks.aa import AutoAttackNative
from robustlab.attacks.adapters import AUTOATTACK_ATTACKS, AutoAttack, TorchattacksAttack
from robustlab.attacks.apgd import APGD, APGDTargeted
from robustlab.attacks.default import DefaultProtocol
from robustlab.attacks.fmn import FMN
from robustlab.attacks.presets import FGSM, IFGSM, MIFGSM, PGD
from robustlab.attacks.protocol import Attack
from robustlab.attacks.square import Square
from robustlab.attacks.topk import TopK
from robustlab.errors import RobustlabError
from robustlab.losses import get_loss, loss_names
from robustlab.registry import Registry, signature_options

# the shared defaults (--steps, --step-size, --loss, ...) an attack takes where its constructor names them
SHARED_OPTIONS = ("steps", "step_size", "loss", "restarts", "seed", "early_stop", "memory_format", "precision")
VARIANTS = ("none", "optional", "required")


@dataclass(frozen=True)
class AttackEntry:
    """A registered attack: how to build it, one line for ``--help``, and which shared defaults it takes.

    ``takes``: the shared defaults (``--steps``, ``--step-size``, ``--loss``, ``--restarts``, ``--seed``, ...) its
    constructor names, less those it ``skips``; the others are left out silently, as they are meant for other attacks
    in the list. ``variant`` says whether the spec names a variant after a colon (``autoattack:plus``,
    ``torchattacks:CW``); the factory then gets it as its first argument.
    """

    name: str
    factory: Callable[..., Attack]
    summary: str
    takes: tuple[str, ...] = ()
    variant: str = "none"

    @property
    def syntax(self) -> str:
        """How a spec names it: ``pgd``, ``autoattack[:VARIANT]``, ``torchattacks:NAME``."""
        return {"none": self.name, "optional": f"{self.name}[:VARIANT]", "required": f"{self.name}:NAME"}[self.variant]


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


ATTACKS: Registry[AttackEntry] = Registry("attack", key=_key, refusal="{name} has no option {option!r}")


def register(
    name: str,
    factory: Callable[..., Attack],
    summary: str,
    variant: str = "none",
    aliases: tuple[str, ...] = (),
    skips: tuple[str, ...] = (),
    replace: bool = False,
) -> AttackEntry:
    """Register an attack under ``name`` (and ``aliases``): ``factory(**options) -> Attack``; ``skips`` names shared
    defaults its constructor takes but that mean something else to it (fgsm's one step, fmn's own step count)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    named, _ = signature_options(factory)
    takes = tuple(o for o in SHARED_OPTIONS if o in named and o not in skips)
    return ATTACKS.register(name, AttackEntry(name, factory, summary, takes, variant), aliases, replace)


def unregister(name: str) -> None:
    """Remove an attack and its aliases from the registry (for tests and plug-ins)."""
    ATTACKS.unregister(name)


def attack_entry(name: str) -> AttackEntry:
    """The registry entry of an attack name or alias; an unknown name raises with the list of choices."""
    return ATTACKS.get(name)


def attack_names() -> list[str]:
    """The registered attack names, in registration order (the choices for the CLI)."""
    return ATTACKS.names()


def attack_help(summaries: bool = False) -> str:
    """The attack choices for ``--help``: one line of spec syntax, or one ``syntax: summary`` line per attack."""
    entries = [ATTACKS.get(name) for name in ATTACKS]
    if summaries:
        return "\n".join(f"{entry.syntax}: {entry.summary}" for entry in entries)
    return (
        f"{', '.join(entry.syntax for entry in entries)}; NAME+LOSS for another loss "
        f"({', '.join(loss_names())}); options in parentheses, e.g. pgd(steps=50)"
    )


def _parse_value(key: str, text: str, spec: str) -> Any:
    text = text.strip()
    if not text:
        raise RobustlabError(f"attack spec {spec!r}: option {key!r} has no value; write {key}=VALUE")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _split_options(spec: str) -> tuple[str, dict[str, Any]]:
    """``"pgd(steps=5,seed=1)"`` -> ``("pgd", {"steps": 5, "seed": 1})``."""
    spec = spec.strip()
    if spec.count("(") != spec.count(")") or spec.count("(") > 1:
        raise RobustlabError(
            f"attack spec {spec!r} has unbalanced or nested parentheses; write options once, e.g. pgd(steps=20)"
        )
    if "(" not in spec:
        return spec, {}
    head, _, rest = spec.partition("(")
    if not rest.endswith(")"):
        raise RobustlabError(f"attack spec {spec!r}: options go in parentheses at the end, e.g. pgd(steps=20)")
    options: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest[:-1].split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise RobustlabError(f"attack spec {spec!r}: option {item!r} is not KEY=VALUE")
        if key in options:
            raise RobustlabError(f"attack spec {spec!r}: option {key!r} is given twice")
        options[key] = _parse_value(key, value, spec)
    return head.strip(), options


def _build(entry: AttackEntry, variant: str | None, kwargs: dict[str, Any], spec: str | None) -> Attack:
    """Check the options against the factory's signature and call it; a refusal names the spec (if one was given)."""
    args = () if entry.variant == "none" else (variant,) if variant is not None else ()
    try:
        ATTACKS.check_options(entry.name, kwargs, entry.factory)
        return entry.factory(*args, **kwargs)
    except TypeError as exc:  # a value of a kind the constructor does not check (attacks=3): still one line
        raise RobustlabError(f"attack spec {spec!r}: {entry.name}: {exc}" if spec else f"{entry.name}: {exc}") from None
    except RobustlabError as exc:
        if spec is None or str(exc).startswith("attack spec"):
            raise
        raise RobustlabError(f"attack spec {spec!r}: {exc}") from None


def make_attack(name: str, **kwargs: Any) -> Attack:
    """Build a registered attack by name with explicit options (``None`` keeps the attack's default)."""
    head, _, variant = name.partition(":")
    entry = attack_entry(head)
    return _build(entry, variant or None, {k: v for k, v in kwargs.items() if v is not None}, None)


def attack_from_spec(spec: str, **defaults: Any) -> Attack:
    """Build an attack from a spec such as ``pgd+cw``, ``autoattack:plus`` or ``torchattacks:Square``.

    ``defaults`` (steps, step_size, loss, restarts, seed, ...; ``None`` = the attack's default) apply where the
    attack's registry entry takes them; options written in the spec win. The attack gets a ``spec`` attribute
    (its report name).
    """
    head, options = _split_options(spec)
    name, colon, variant = head.partition(":")
    name, plus, loss = name.partition("+")
    entry = attack_entry(name)
    if colon and entry.variant == "none":
        raise RobustlabError(f"attack spec {spec!r}: {entry.name} has no variants after ':'")
    if not colon and entry.variant == "required":
        raise RobustlabError(f"attack spec {spec!r}: name one, e.g. {entry.name}:NAME")
    kwargs = {k: v for k, v in defaults.items() if v is not None and k in entry.takes}
    if plus:
        if "loss" not in entry.takes:
            raise RobustlabError(f"attack spec {spec!r}: {entry.name} takes no loss after '+'")
        if not loss:
            raise RobustlabError(f"attack spec {spec!r}: name a loss after '+', e.g. pgd+cw")
        get_loss(loss)  # a clear error for an unknown loss
        kwargs["loss"] = loss.lower()
    attack = _build(entry, variant.strip() if colon else None, {**kwargs, **options}, spec)
    attack.spec = spec.strip()
    return attack


def split_specs(text: str) -> list[str]:
    """Split a comma-separated ``--attacks`` list, keeping ``autoattack:apgd-ce,apgd-t`` and ``(a=1,b=2)`` whole.

    The same attack twice is refused: the evaluator keys its results by spec, so one of them would be lost.
    """
    specs: list[str] = []
    depth = 0
    current = ""
    for char in text:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            specs.append(current.strip())
            current = ""
        else:
            current += char
    specs.append(current.strip())
    merged: list[str] = []
    for spec in filter(None, specs):
        previous_is_autoattack = bool(merged) and merged[-1].lower().startswith("autoattack:")
        if previous_is_autoattack and _split_options(spec)[0].lower() in AUTOATTACK_ATTACKS:
            merged[-1] += "," + spec
        else:
            merged.append(spec)
    if not merged:
        raise RobustlabError("no attacks given; e.g. --attacks pgd,autoattack")
    seen: set[str] = set()
    for spec in merged:
        key = "".join(spec.lower().split())
        if key in seen:
            raise RobustlabError(f"attack {spec!r} is listed twice in {text!r}; give each attack once")
        seen.add(key)
    return merged


# The built-in attacks: one line each.
register("fgsm", FGSM, "one signed step of size eps (Goodfellow et al. 2015)", skips=("steps", "restarts"))
register("ifgsm", IFGSM, "I-FGSM / BIM: steps of eps/steps (Kurakin et al. 2017)", aliases=("bim",))
register("pgd", PGD, "random start, steps of 2.5 eps/steps, restarts (Madry et al. 2018)")
register("mifgsm", MIFGSM, "I-FGSM with momentum (Dong et al. 2018)")
register("topk", TopK, "push the true class out of the top k (Zhang et al. 2022)", skips=("early_stop",))  # ranks
register("apgd", APGD, "APGD: step halving at checkpoints, momentum 0.75 (Croce & Hein 2020)")
register("apgd-t", APGDTargeted, "APGD, targeted DLR towards the top 9 other classes in turn", skips=("loss",))
SQUARE = "black-box random search on squares, n_queries=5000 (Andriushchenko et al. 2020)"
register("square", Square, SQUARE, skips=("restarts",))
register("fmn", FMN, "fast minimum-norm: each sample's smallest perturbation, steps=100 (Pintor et al. 2021)",
         skips=("steps",))  # fmt: skip
AA = functools.partial(AutoAttackNative.standard, attack_from_spec, attack_names)  # members built from this registry
register("aa", AA, "native AutoAttack standard: apgd, apgd-t, fmn, square on what is still robust")
DEFAULT = functools.partial(DefaultProtocol.standard, attack_from_spec, attack_names)  # robustlab eval's default
register("default", DEFAULT, "robustlab eval's default: apgd, then apgd-t (2 MALT targets) on what is still robust")
register("autoattack", AutoAttack.from_variant, "pyautoattack: standard, plus, rand", "optional")
register("torchattacks", TorchattacksAttack, "any torchattacks attack by class name", "required")

__all__ = [
    "ATTACKS",
    "SHARED_OPTIONS",
    "AttackEntry",
    "attack_entry",
    "attack_from_spec",
    "attack_help",
    "attack_names",
    "make_attack",
    "register",
    "split_specs",
    "unregister",
]
