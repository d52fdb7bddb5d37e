"""One frozen, typed config per kind of attack-running run -- :class:`AttackConfig` (``robustlab attack``),
:class:`EvalConfig` (``eval``), :class:`TransferConfig` (``transfer``) -- each holding a :class:`ThreatModel` and the
attack defaults (:class:`AttackOptions`), its defaults here, a ``fingerprint()`` made of its own fields (what
``--resume`` compares, flat: ``norm``, ``eps``, ``bounds``, ``steps``, ... as run folders always recorded them) and
a ``build()`` of its attacks. The CLI maps its arguments onto them; ``run_attack``, ``run_evaluation`` and
``run_transfer`` take them.

``--steps`` (and ``--step-size``, ``--loss``, ``--restarts``) mean one thing in every run: a default for every
chosen attack that takes it (:attr:`~robustlab.attacks.registry.AttackEntry.takes`; an option written in a spec
wins). When no chosen attack takes it, an attack that names it as an option of its own (fgsm's one step, fmn's
step count) is given it as if it were written in its spec, so it answers in its own words; when none names it,
the run is refused in one line before any work (it would otherwise be dropped silently).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from robustlab.attacks import Targeted, attack_from_spec, split_specs
from robustlab.attacks.default import stage_entries
from robustlab.attacks.registry import attack_entry
from robustlab.errors import RobustlabError
from robustlab.eval.adaptive import MODES
from robustlab.eval.evaluator import VOTES
from robustlab.registry import signature_options
from robustlab.threat import ThreatModel, parse_eps

DEFAULT_TRANSFER_ATTACKS = "fgsm,ifgsm,ifgsm+normalized-ce"
OPTIONS = ("steps", "step_size", "loss", "restarts")  # the attack defaults a user sets (--steps, ...)


def as_threat(threat: ThreatModel | float | str) -> ThreatModel:
    """``threat`` as a :class:`ThreatModel`; a bare eps (``0.1``, ``"8/255"``) is Linf in [0, 1]."""
    return threat if isinstance(threat, ThreatModel) else ThreatModel("linf", threat)


@dataclass(frozen=True, kw_only=True)
class AttackOptions:
    """The attack defaults and run settings every attack-running config has (keyword-only, in the library)."""

    steps: int | None = None  # None: each attack's own default
    step_size: float | None = None
    loss: str | None = None
    restarts: int | None = None
    seed: int = 0  # the attacks' own random generators
    batch_size: int = 256
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in report.json's config, changes nothing

    def given(self) -> dict[str, Any]:
        """The attack defaults that are set (not None)."""
        return {k: getattr(self, k) for k in OPTIONS if getattr(self, k) is not None}

    def attacks_from(self, attacks: Any, *, used_elsewhere: Sequence[str] = (), **shared: Any) -> dict[str, Any]:
        """``{name: attack}`` of specs (a comma-separated string or a list; a repeated spec is refused) with the
        defaults applied by the module's rule, or attack objects as given (``{name: attack}``; defaults refused).
        ``used_elsewhere``: options the run uses itself (eval's sanity checks take ``steps``); ``shared``: further
        shared defaults (early_stop, memory_format, precision)."""
        given = self.given()
        if isinstance(attacks, Mapping):
            if given:
                raise RobustlabError(f"{_flags(given)} apply to attacks given by spec; set them on the attack objects")
            return dict(attacks)
        specs = split_specs(attacks) if isinstance(attacks, str) else [s.strip() for s in attacks]
        repeated = sorted({s for s in specs if specs.count(s) > 1})
        if repeated:
            raise RobustlabError(f"attack {repeated[0]!r} is listed twice; give each attack once")
        entries = {spec: attack_entry(_name(spec)) for spec in specs}
        own: dict[str, dict[str, Any]] = {spec: {} for spec in specs}  # options given as if written in the spec
        for option, value in given.items():
            if option in used_elsewhere or any(option in e.takes for e in entries.values()):
                continue
            naming = [s for s, e in entries.items() if option in signature_options(e.factory)[0]]
            if not naming:
                raise RobustlabError(
                    f"{_flags({option: value})}: none of the attacks {', '.join(specs)} takes it; drop it, or choose "
                    "an attack that does (e.g. pgd)"
                )
            for spec in naming:  # an option written in the spec wins
                if f"{option}=" not in spec.partition("(")[2].replace(" ", ""):
                    own[spec][option] = value
        return {spec: attack_from_spec(_with_options(spec, own[spec]), seed=self.seed, **given, **shared) if own[spec]
                else attack_from_spec(spec, seed=self.seed, **given, **shared) for spec in specs}  # fmt: skip

    def settings(self, exclude: Sequence[str] = ()) -> dict[str, Any]:
        """The config's fields as a flat dict (the threat model as norm, eps, bounds), shallow: what report.json
        records and what the fingerprint is made of."""
        out: dict[str, Any] = {}
        names = [f.name for f in fields(self)]
        for name in names:
            value = getattr(self, name)
            if isinstance(value, ThreatModel):  # an eps field of its own (eval's radii) stays
                out.update(norm=value.norm, bounds=tuple(value.bounds))
                out.update({} if "eps" in names else {"eps": value.eps})
            else:
                out[name] = value
        return {k: v for k, v in out.items() if k not in exclude}

    def spec_keys(self, attacks: Any) -> list[str] | dict[str, dict]:
        """The attacks' part of the fingerprint: the specs (the defaults they are built with are fields of their
        own), or each attack object's configuration."""
        if isinstance(attacks, Mapping):
            return {name: getattr(a, "config", dict)() for name, a in attacks.items()}
        if isinstance(attacks, str):
            return split_specs(attacks)
        return [s.strip() for s in attacks]


@dataclass(frozen=True)
class AttackConfig(AttackOptions):
    """One attack (a spec, e.g. ``pgd``, ``topk(k=3)``, ``autoattack``; or an attack object) at one threat model
    (a bare eps: Linf in [0, 1]); ``target`` makes it targeted (a class index, ``random`` or ``least-likely``)."""

    attack: Any
    threat: ThreatModel
    target: str | None = None
    topk: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "threat", as_threat(self.threat))

    def build(self) -> Any:
        """The attack object, wrapped in :class:`~robustlab.attacks.Targeted` when a target rule is given."""
        if isinstance(self.attack, str):
            built = self.attacks_from(self.attack)
            if len(built) != 1:
                raise RobustlabError(f"attack {self.attack!r} names {len(built)} attacks; give one (several: eval)")
            attack = next(iter(built.values()))
        else:
            attack = self.attacks_from({"attack": self.attack})["attack"]
        return Targeted(attack, self.target, seed=self.seed) if self.target else attack

    def fingerprint(self) -> dict[str, Any]:
        """Every setting that changes the result (the attack: its spec, or an object's name and configuration)."""
        attack = self.attack
        if not isinstance(attack, str):
            attack = self.spec_keys({getattr(attack, "name", type(attack).__name__): attack})
        return {**self.settings(exclude=("attack", "extra")), "attack": attack}


@dataclass(frozen=True)
class TransferConfig(AttackOptions):
    """Attacks (specs or ``{name: attack}``) crafted on surrogates at one threat model (a bare eps: Linf in
    [0, 1]), judged on targets; the k's of the tables."""

    threat: ThreatModel
    attacks: str | tuple[str, ...] | Mapping[str, Any] = DEFAULT_TRANSFER_ATTACKS
    topk: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "threat", as_threat(self.threat))

    def build(self) -> dict[str, Any]:
        """``{name: attack}`` in order, the attack defaults applied."""
        return self.attacks_from(self.attacks)

    def fingerprint(self) -> dict[str, Any]:
        """Every setting that changes the result."""
        return {**self.settings(exclude=("attacks", "extra")), "attacks": self.spec_keys(self.attacks)}


@dataclass(frozen=True)
class EvalConfig(AttackOptions):
    """Everything that changes an evaluation's result.

    ``eps`` are the radii evaluated under ``threat``'s norm and bounds (none given: ``threat.eps``; ``threat`` then
    holds the largest). ``attacks`` are specs (``"pgd,autoattack"``, ``["pgd(steps=50)", "autoattack"]``) built with
    the attack defaults, or ``{name: attack}`` objects; ``steps`` also sets the sanity checks' steps.
    ``only_robust`` runs each attack only on what the previous ones left robust (AutoAttack's protocol).
    ``sanity_n`` samples go through the gradient-masking checks (0 skips them), before the attacks.

    ``eps_protocol="nested"`` evaluates the eps in ascending order and carries a sample broken at a smaller eps (with
    its example, which lies in every larger ball) to the larger ones, attacking only the others; ``"separate"``
    evaluates each eps from scratch. ``adaptive="on"`` adds the attacks that answer the sanity flags that fire
    (:mod:`robustlab.eval.adaptive`; ``surrogate`` adds a transfer attack from it), ``"off"`` keeps the plain
    protocol and marks the headline as unreliable. ``bpda`` names modules run forward as they are and as the
    identity backward, for every attack. ``predictions`` passes judge each prediction of a randomised model
    (``vote``: ``"mean"`` logits or ``"majority"``).

    ``early_stop`` (default on) lets gradient attacks built from specs drop a sample at the first iterate that breaks
    it (off when ``topk`` asks for ranks beyond 1 or ``predictions`` > 1). ``memory_format`` and ``precision`` are
    those attacks' layout and gradient-step precision (:mod:`robustlab.attacks.runtime`).
    """

    eps: float | tuple[float, ...] = ()
    threat: ThreatModel = ThreatModel()
    attacks: str | tuple[str, ...] | Mapping[str, Any] = "default"
    topk: tuple[int, ...] | None = None
    only_robust: bool = True
    sanity_n: int = 100
    plots: bool = True
    eps_protocol: str = "nested"
    adaptive: str = "on"
    bpda: tuple[str, ...] = ()
    predictions: int = 1
    vote: str = "mean"
    surrogate: Any = None  # a model spec, ModelSource or module: transfer source of the adaptive step
    eot_samples: int = 10
    adaptive_queries: int = 1000
    early_stop: bool = True
    curve: bool = False  # also the whole robustness curve from one minimum-norm run (eval/curve.py)
    memory_format: str = "contiguous"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        threat = as_threat(self.threat)
        eps = (self.eps,) if isinstance(self.eps, (int, float, str)) else tuple(self.eps)
        eps = tuple(parse_eps(e) if isinstance(e, str) else e for e in eps) or (threat.eps,)
        if any(not math.isfinite(e) or e < 0 for e in eps):
            raise RobustlabError(f"eps {list(eps)}: give one or more finite radii >= 0")
        for e in eps:
            threat.with_eps(e)  # one line for a bad norm, eps or bounds, before any work
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "threat", threat.with_eps(max(eps)))
        if self.sanity_n < 0:
            raise RobustlabError(f"--sanity-n {self.sanity_n} is negative; give 0 (skip the checks) or more samples")
        if self.batch_size < 1:
            raise RobustlabError(f"--batch-size {self.batch_size}: give 1 or more")
        if self.topk is not None and (not self.topk or min(self.topk) < 1):
            raise RobustlabError(f"--topk {list(self.topk)}: give k >= 1, e.g. 1,2,3,5")
        if self.eps_protocol not in ("nested", "separate"):
            raise RobustlabError(f"--eps-protocol {self.eps_protocol!r}: choose nested or separate")
        if self.adaptive not in MODES:
            raise RobustlabError(f"--adaptive {self.adaptive!r}: choose on or off")
        if self.vote not in VOTES or self.predictions < 1 or self.eot_samples < 1 or self.adaptive_queries < 1:
            raise RobustlabError(
                f"--predictions {self.predictions}, --vote {self.vote!r}, eot_samples {self.eot_samples}, "
                f"adaptive_queries {self.adaptive_queries}: give counts >= 1 and a vote of {', '.join(VOTES)}"
            )
        bpda = (self.bpda,) if isinstance(self.bpda, str) else tuple(self.bpda)
        object.__setattr__(self, "bpda", tuple(n.strip() for b in bpda for n in b.split(",") if n.strip()))

    @property
    def nested(self) -> bool:
        """Whether the eps are evaluated nested (several eps, only-robust attacks, not asked to be separate)."""
        return self.eps_protocol == "nested" and self.only_robust and len(set(self.eps)) > 1

    def build(self) -> dict[str, Any]:
        """``{name: attack}`` in order, the attack defaults applied (``steps`` serves the sanity checks too)."""
        # top-k ranks need the final iterate; a randomised model's one pass is no verdict to stop on
        early = self.early_stop and (self.topk is None or max(self.topk) == 1) and self.predictions == 1
        built = self.attacks_from(self.attacks, used_elsewhere=("steps",) if self.sanity_n else (), early_stop=early,
                                   memory_format=self.memory_format, precision=self.precision)  # fmt: skip
        return stage_entries(built) if self.only_robust else built  # a protocol's stages: entries of their own

    def fingerprint(self) -> dict[str, Any]:
        """What the cached per-eps batches depend on (eps has a folder per value; sanity_n its own cache key)."""
        keys = self.settings(exclude=("eps", "sanity_n", "topk", "plots", "extra", "attacks", "surrogate", "curve"))
        surrogate = self.surrogate
        if surrogate is not None and not isinstance(surrogate, str):  # its spec, or its class for a module
            surrogate = getattr(surrogate, "spec", type(surrogate).__name__)
        return {**keys, "surrogate": surrogate, "attacks": self.spec_keys(self.attacks)}


def _name(spec: str) -> str:
    """The registered name a spec builds (``pgd+cw(steps=3)`` -> ``pgd``)."""
    return spec.split("(")[0].split(":")[0].split("+")[0].strip()


def _with_options(spec: str, options: dict[str, Any]) -> str:
    """``spec`` with ``options`` written into its parentheses; options already in the spec win."""
    written = ",".join(f"{k}={v!r}" for k, v in options.items())
    head, paren, rest = spec.strip().partition("(")
    return f"{head}({written},{rest}" if paren else f"{head}({written})"


def _flags(options: Mapping[str, Any]) -> str:
    return ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items())


__all__ = [
    "DEFAULT_TRANSFER_ATTACKS",
    "OPTIONS",
    "AttackConfig",
    "AttackOptions",
    "EvalConfig",
    "TransferConfig",
    "as_threat",
]
