"""Attacks from short text specs, as the command line writes them.

Grammar (case-insensitive)::

    fgsm | ifgsm | bim | pgd | mifgsm            our gradient attacks (robustlab.attacks.make_attack)
    NAME+LOSS                                    the same with another loss: pgd+cw, ifgsm+normalized-ce
    topk[+LOSS]                                  the top-k attack (robustlab.attacks.topk.TopK): topk(k=3,base=pgd)
    autoattack[:standard|plus|rand]              AutoAttack through pyautoattack (default: standard)
    autoattack:apgd-ce,apgd-t                    AutoAttack with a custom list of its attacks
    torchattacks:NAME                            any torchattacks attack: torchattacks:CW, torchattacks:Square

Any spec may end with options in parentheses, passed to the attack's constructor:
``pgd+cw(steps=50,restarts=5)``, ``autoattack:apgd-ce,apgd-t(n_iter=20)``, ``torchattacks:CW(c=1,steps=100)``.
"""

from __future__ import annotations

import ast
from typing import Any

from robustlab.attacks.adapters import AUTOATTACK_ATTACKS, AutoAttack, TorchattacksAttack
from robustlab.attacks.presets import make_attack
from robustlab.attacks.topk import TopK
from robustlab.errors import RobustlabError
from robustlab.losses import get_loss

_GRADIENT_KEYS = ("steps", "step_size", "loss", "restarts", "seed")
_AUTOATTACK_KEYS = ("seed", "batch_size", "n_iter", "n_restarts", "n_target_classes", "n_queries")


def _parse_value(text: str) -> Any:
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _split_options(spec: str) -> tuple[str, dict[str, Any]]:
    """``"pgd(steps=5,seed=1)"`` -> ``("pgd", {"steps": 5, "seed": 1})``."""
    spec = spec.strip()
    if "(" not in spec:
        if ")" in spec:
            raise RobustlabError(f"attack spec {spec!r} has a ')' without '('")
        return spec, {}
    head, _, rest = spec.partition("(")
    if not rest.endswith(")"):
        raise RobustlabError(f"attack spec {spec!r}: options go in parentheses at the end, e.g. pgd(steps=20)")
    options: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest[:-1].split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise RobustlabError(f"attack spec {spec!r}: option {item!r} is not KEY=VALUE")
        options[key.strip().replace("-", "_")] = _parse_value(value)
    return head.strip(), options


def attack_from_spec(spec: str, **defaults: Any) -> Any:
    """Build an attack from a spec such as ``pgd+cw``, ``autoattack:plus`` or ``torchattacks:Square``.

    ``defaults`` (steps, step_size, loss, restarts, seed, ...; ``None`` = the attack's default) apply where the
    attack takes them; options written in the spec win. The attack gets a ``spec`` attribute (its report name).
    """
    head, options = _split_options(spec)
    key = head.lower()
    defaults = {k: v for k, v in defaults.items() if v is not None}
    if key.startswith("torchattacks:"):
        name = head.split(":", 1)[1]
        kwargs = {k: v for k, v in defaults.items() if k == "seed"}
        attack: Any = TorchattacksAttack(name, **{**kwargs, **options})
    elif key == "autoattack" or key.startswith("autoattack:"):
        variant = key.split(":", 1)[1] if ":" in key else "standard"
        names = [v.strip() for v in variant.split(",") if v.strip()]
        kwargs = {k: v for k, v in defaults.items() if k in _AUTOATTACK_KEYS}
        kwargs.update(options)
        if len(names) == 1 and names[0] not in AUTOATTACK_ATTACKS:
            attack = AutoAttack(version=names[0], **kwargs)
        else:
            attack = AutoAttack(attacks=names, **kwargs)
    else:
        name, plus, loss = key.partition("+")
        kwargs = {k: v for k, v in defaults.items() if k in _GRADIENT_KEYS}
        if name == "fgsm":  # one step, no restarts: shared --steps/--restarts defaults do not apply
            kwargs = {k: v for k, v in kwargs.items() if k not in ("steps", "restarts")}
        if plus:
            if not loss:
                raise RobustlabError(f"attack spec {spec!r}: name a loss after '+', e.g. pgd+cw")
            get_loss(loss)  # a clear error for an unknown loss
            kwargs["loss"] = loss
        kwargs.update(options)
        try:
            attack = TopK(**kwargs) if name == "topk" else make_attack(name, **kwargs)
        except TypeError as exc:
            raise RobustlabError(f"attack spec {spec!r}: {exc}") from None
    attack.spec = spec.strip()
    return attack


def split_specs(text: str) -> list[str]:
    """Split a comma-separated ``--attacks`` list, keeping ``autoattack:apgd-ce,apgd-t`` and ``(a=1,b=2)`` whole."""
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
    return merged


__all__ = ["attack_from_spec", "split_specs"]
