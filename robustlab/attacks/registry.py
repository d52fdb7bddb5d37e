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
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robustlab.attacks.aa import AutoAttackNative
from robustlab.attacks.adapters import AUTOATTACK_ATTACKS, AUTOATTACK_OPTIONS, AutoAttack, TorchattacksAttack
from robustlab.attacks.apgd import APGD, APGDTargeted
from robustlab.attacks.fmn import FMN
from robustlab.attacks.presets import FGSM, IFGSM, MIFGSM, PGD
from robustlab.attacks.protocol import Attack
from robustlab.attacks.square import Square
from robustlab.attacks.topk import TopK
from robustlab.errors import RobustlabError
from robustlab.losses import get_loss, loss_names

RUNTIME_OPTIONS = ("memory_format", "precision")  # how an attack runs, not what it finds (issue 15)
GRADIENT_OPTIONS = ("steps", "step_size", "loss", "restarts", "seed", "early_stop", *RUNTIME_OPTIONS)
VARIANTS = ("none", "optional", "required")


@dataclass(frozen=True)
class AttackEntry:
    """A registered attack: how to build it, one line for ``--help``, and which shared defaults it takes.

    ``takes`` names the shared defaults (``--steps``, ``--step-size``, ``--loss``, ``--restarts``, ``--seed``, ...)
    that apply to it; the others are left out silently, as they are meant for other attacks in the list.
    ``variant`` says whether the spec names a variant after a colon (``autoattack:plus``, ``torchattacks:CW``);
    the factory then gets it as its first argument.
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


_REGISTRY: dict[str, AttackEntry] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def register(
    name: str,
    factory: Callable[..., Attack],
    summary: str,
    takes: tuple[str, ...] = (),
    variant: str = "none",
    aliases: tuple[str, ...] = (),
    replace: bool = False,
) -> AttackEntry:
    """Register an attack under ``name`` (and ``aliases``): ``factory(**options) -> Attack``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    keys = [_key(n) for n in (name, *aliases)]
    taken = [k for k in keys if (k in _REGISTRY or k in _ALIASES) and not replace]
    if taken:
        raise ValueError(f"attack name(s) {taken} are registered already; pass replace=True to replace them")
    entry = AttackEntry(name, factory, summary, tuple(takes), variant)
    _REGISTRY[keys[0]] = entry
    _ALIASES.update(dict.fromkeys(keys[1:], keys[0]))
    return entry


def unregister(name: str) -> None:
    """Remove an attack and its aliases from the registry (for tests and plug-ins)."""
    key = _key(name)
    _REGISTRY.pop(key, None)
    for alias in [a for a, k in _ALIASES.items() if k == key]:
        del _ALIASES[alias]


def attack_entry(name: str) -> AttackEntry:
    """The registry entry of an attack name or alias; an unknown name raises with the list of choices."""
    key = _key(name)
    entry = _REGISTRY.get(_ALIASES.get(key, key))
    if entry is None:
        raise RobustlabError(f"unknown attack {name!r}; choose one of: {', '.join(attack_names())}")
    return entry


def attack_names() -> list[str]:
    """The registered attack names, in registration order (the choices for the CLI)."""
    return [entry.name for entry in _REGISTRY.values()]


def attack_help(summaries: bool = False) -> str:
    """The attack choices for ``--help``: one line of spec syntax, or one ``syntax: summary`` line per attack."""
    if summaries:
        return "\n".join(f"{entry.syntax}: {entry.summary}" for entry in _REGISTRY.values())
    return (
        f"{', '.join(entry.syntax for entry in _REGISTRY.values())}; NAME+LOSS for another loss "
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
    """Call the entry's factory; a wrong option becomes one line naming the spec (if the attack came from one)."""
    args = () if entry.variant == "none" else (variant,) if variant is not None else ()
    try:
        return entry.factory(*args, **kwargs)
    except TypeError as exc:
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        problem = f"{entry.name} has no option {unknown.group(1)!r}" if unknown else str(exc)
        raise RobustlabError(f"attack spec {spec!r}: {problem}" if spec else problem) from None
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
    attack.spec = spec.strip()  # type: ignore[attr-defined]
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
FGSM_OPTIONS = ("step_size", "loss", "seed", "early_stop", *RUNTIME_OPTIONS)
register("fgsm", FGSM, "one signed step of size eps (Goodfellow et al. 2015)", FGSM_OPTIONS)
register("ifgsm", IFGSM, "I-FGSM / BIM: steps of eps/steps (Kurakin et al. 2017)", GRADIENT_OPTIONS, aliases=("bim",))
register("pgd", PGD, "random start, steps of 2.5 eps/steps, restarts (Madry et al. 2018)", GRADIENT_OPTIONS)
register("mifgsm", MIFGSM, "I-FGSM with momentum (Dong et al. 2018)", GRADIENT_OPTIONS)
TOPK_OPTIONS = ("steps", "step_size", "loss", "restarts", "seed", *RUNTIME_OPTIONS)  # no early stop: ranks
register("topk", TopK, "push the true class out of the top k (Zhang et al. 2022)", TOPK_OPTIONS)
register("apgd", APGD, "APGD: step halving at checkpoints, momentum 0.75 (Croce & Hein 2020)", GRADIENT_OPTIONS)
APGD_T_OPTIONS = ("steps", "step_size", "restarts", "seed", "early_stop", *RUNTIME_OPTIONS)
register("apgd-t", APGDTargeted, "APGD, targeted DLR towards the top 9 other classes in turn", APGD_T_OPTIONS)
register("square", Square, "black-box random search on squares, n_queries=5000 (Andriushchenko et al. 2020)", ("seed",))
register("fmn", FMN, "fast minimum-norm: each sample's smallest perturbation, steps=100 (Pintor et al. 2021)")
AA_OPTIONS = ("seed", "early_stop", *RUNTIME_OPTIONS)  # the members' budgets are AutoAttack standard's
AA = functools.partial(AutoAttackNative.standard, attack_from_spec, attack_names)  # members built from this registry
register("aa", AA, "native AutoAttack standard: apgd, apgd-t, fmn, square on what is still robust", AA_OPTIONS)
register("autoattack", AutoAttack.from_variant, "pyautoattack: standard, plus, rand", AUTOATTACK_OPTIONS, "optional")
register("torchattacks", TorchattacksAttack, "any torchattacks attack by class name", ("seed",), "required")

__all__ = [
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
