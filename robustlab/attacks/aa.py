"""``aa``: AutoAttack standard on robustlab's own attacks (Croce & Hein 2020), each run only on what is still robust.

The members are built by spec from the attack registry when the preset is built: APGD-CE (100 iterations, one
restart), APGD-T (100 iterations, 9 targets), a minimum-norm attack (FMN, else FAB-T, where registered) and Square
(5000 queries), AutoAttack standard's budgets. A member whose attack is not registered is left out and named in the
result's ``info["missing"]`` (and in :meth:`AutoAttackNative.config`), so the preset never claims what it did not run.
The reference, pyautoattack, stays available as the ``autoattack`` adapter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attacks.protocol import Attack, AttackBase, AttackResult
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel

# AutoAttack standard: (the attack's registry name, its spec at the standard budget); alternatives in order
STANDARD: tuple[tuple[tuple[str, str], ...], ...] = (
    (("apgd", "apgd(steps=100,restarts=1)"),),
    (("apgd-t", "apgd-t(steps=100,targets=9)"),),
    (("fmn", "fmn"), ("fab", "fab")),
    (("square", "square(n_queries=5000)"),),
)


class AutoAttackNative(AttackBase):
    """AutoAttack's protocol on native attacks: each member attacks only the samples the earlier ones left robust;
    a sample's result is the first member's success, else the last member's answer.

    Args:
        members: ``{name: attack}`` in order (see :meth:`standard` for AutoAttack standard's members).
        missing: members of the standard that could not be built (their attack is not registered).
    """

    name = "aa"
    staged = False  # True: the evaluator runs the members as entries of their own (see DefaultProtocol)

    def __init__(self, members: dict[str, Attack], missing: Sequence[str] = ()) -> None:
        if not members:
            raise RobustlabError("aa needs at least one member attack, e.g. apgd")
        self.members = dict(members)
        self.missing = list(missing)

    @classmethod
    def standard(
        cls,
        build: Callable[..., Attack],
        registered: Callable[[], list[str]],
        seed: int = 0,
        early_stop: bool | None = None,
        memory_format: str | None = None,
        precision: str | None = None,
    ) -> AutoAttackNative:
        """AutoAttack standard's members built by ``build(spec, **options)`` (the registry's ``attack_from_spec``)
        from those of ``registered()`` names; an option applies where a member takes it (``None``: its default)."""
        shared = {"seed": seed, "early_stop": early_stop, "memory_format": memory_format, "precision": precision}
        return cls.from_specs(STANDARD, build, registered, **shared)

    @classmethod
    def from_specs(
        cls,
        stages: Sequence[Sequence[tuple[str, str]]],
        build: Callable[..., Attack],
        registered: Callable[[], list[str]],
        **shared: Any,
    ) -> AutoAttackNative:
        """The members ``stages`` lists (per stage, ``(registry name, spec)`` alternatives in order), each built by
        ``build(spec, **shared)`` from the first alternative ``registered()`` names; a stage with none is missing."""
        names = {n.lower() for n in registered()}
        members: dict[str, Attack] = {}
        missing: list[str] = []
        for choices in stages:
            spec = next((spec for name, spec in choices if name in names), None)
            if spec is None:
                missing.append(" or ".join(name for name, _ in choices))
                continue
            members[spec] = build(spec, **shared)
        return cls(members, missing)

    @property
    def per_sample(self) -> bool:
        """Whether a sample's result is independent of its batch: so for every member."""
        return all(attack.per_sample for attack in self.members.values())

    def config(self) -> dict:
        """The members' configurations, for reports."""
        members = {name: attack.config() for name, attack in self.members.items()}
        return {"attack": self.name, "members": members, "missing": self.missing}

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        """Run the members in order, each on the samples still robust; per member its successes and seconds."""
        start = time.perf_counter()
        result: AttackResult | None = None
        log: dict[str, dict[str, float | int]] = {}
        for name, attack in self.members.items():
            rows = torch.arange(x.shape[0], device=x.device) if result is None else (~result.success).nonzero()[:, 0]
            if rows.numel() == 0:
                break
            begin = time.perf_counter()
            args = (model, x[rows], y[rows], threat) + (() if target is None else (target[rows],))
            part = attack(*args)
            log[name] = {"attacked": rows.numel(), "broken": int(part.success.sum()),
                         "time_s": time.perf_counter() - begin}  # fmt: skip
            result = part if result is None else _replace(result, rows, part)
        assert result is not None
        result.info = {"time_s": time.perf_counter() - start, **self.config(), "per_member": log}
        return result


def _replace(result: AttackResult, rows: Tensor, part: AttackResult) -> AttackResult:
    """``result`` with the rows ``rows`` replaced by ``part``'s answer (a later member's, on what was still robust)."""
    out = AttackResult(result.x_adv.clone(), result.success.clone(), result.loss.clone(), result.logits.clone())
    out.x_adv[rows], out.success[rows] = part.x_adv.to(out.x_adv.dtype), part.success
    out.loss[rows], out.logits[rows] = part.loss.to(out.loss.dtype), part.logits.to(out.logits.dtype)
    return out


__all__ = ["STANDARD", "AutoAttackNative"]
