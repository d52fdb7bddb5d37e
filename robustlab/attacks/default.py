"""``default``: what ``robustlab eval`` runs without ``--attacks``: AutoAttack standard's answer at a tenth of its cost.

Two stages, each only on what the one before left robust, each stopping a sample at the first iterate that breaks
it: APGD-CE (100 iterations, one restart), then APGD-T (100 iterations) towards the two target classes MALT ranks
first (Melamed et al. 2024: the smallest logit gap over the dual norm of its input gradient). Measured on the first
200 Fashion-MNIST test images (bench/eval_cost.py, docs/benchmarks.md): the same robust accuracy as pyautoattack
standard on every zoo robust model (cnn-pgdat, cnn-noiseaug, deacl-slf at Linf 0.1; cnn at 0.02 and 0.05) with
6.3-6.4 % of its forward + backward passes. On the first 1000 images it is 0.2 (pgdat) and 0.4 (noiseaug) points
above AutoAttack: Square with 5000 queries breaks 5 of those 6 samples, the gradient attacks at most one each
(docs/benchmarks.md); the sanity checks and the adaptive step (:mod:`robustlab.eval.adaptive`) add Square only
where a gradient-masking flag fires.

The evaluator runs the stages as entries of their own (``default/apgd-ce``, ``default/apgd-t``), so the report says
which stage broke each sample and what each cost; called directly, the protocol chains them itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from robustlab.attacks.aa import AutoAttackNative
from robustlab.attacks.protocol import Attack

# per stage: (its name in the report, the registry name, its spec)
STAGES: tuple[tuple[str, str, str], ...] = (
    ("apgd-ce", "apgd", "apgd(steps=100,restarts=1)"),
    ("apgd-t", "apgd-t", "apgd-t(steps=100,targets=2,ranking='malt')"),
)


class DefaultProtocol(AutoAttackNative):
    """The default protocol's stages (:data:`STAGES`), each on what the earlier ones left robust; the evaluator
    runs them as its own entries (``staged``), so each has its successes and passes in the report."""

    name = "default"
    staged = True

    @classmethod
    def standard(
        cls,
        build: Callable[..., Attack],
        registered: Callable[[], list[str]],
        seed: int = 0,
        early_stop: bool | None = True,
        memory_format: str | None = None,
        precision: str | None = None,
    ) -> DefaultProtocol:
        """The stages built by ``build(spec, **options)`` (the registry's ``attack_from_spec``); early stopping is
        on unless asked off (top-k ranks or repeated predictions need the final iterate)."""
        shared = {"seed": seed, "early_stop": early_stop, "memory_format": memory_format, "precision": precision}
        built = cls.from_specs([[(name, spec)] for _, name, spec in STAGES], build, registered, **shared)
        labels = {spec: label for label, _, spec in STAGES}
        return cls({labels[spec]: attack for spec, attack in built.members.items()}, built.missing)


def stage_entries(attacks: Mapping[str, Attack]) -> dict[str, Attack]:
    """``attacks`` in order with each staged protocol's members as entries ``NAME/MEMBER`` of their own (what the
    evaluator runs on what is still robust): the report then says which member broke each sample and its cost."""
    members = {n: getattr(a, "members", {}) if getattr(a, "staged", False) else {"": a} for n, a in attacks.items()}
    return {f"{n}/{m}" if m else n: a for n, parts in members.items() for m, a in parts.items()}


__all__ = ["STAGES", "DefaultProtocol", "stage_entries"]
