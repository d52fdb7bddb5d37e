"""The declared kinds of sanity flag: what the adaptive step, the indicators and the reports dispatch on, instead of
matching flag names as strings."""

from __future__ import annotations

from enum import Enum


class FlagKind(str, Enum):
    """A flag's kind; its value is the flag's ``name`` as reports store it."""

    TRAIN_MODE = "train_mode"
    RANDOM_FORWARD = "random_forward"
    ZERO_OR_NAN_GRADIENTS = "zero_or_nan_gradients"
    EPS_ZERO_NOT_CLEAN = "eps_zero_not_clean"
    RISES_WITH_STEPS = "rises_with_steps"
    RISES_WITH_EPS = "rises_with_eps"
    BLACKBOX_BEATS_WHITEBOX = "blackbox_beats_whitebox"
    RISES_WITH_EPS_IN_EVALUATION = "rises_with_eps_in_evaluation"
    CLEAN_ACCURACY_AT_CHANCE = "clean_accuracy_at_chance"


def kind_of(name: str) -> FlagKind | None:
    """The kind of a flag named ``name`` (None for a name this version does not know, e.g. from a newer report)."""
    return FlagKind._value2member_map_.get(name)  # type: ignore[return-value]


__all__ = ["FlagKind", "kind_of"]
