"""Defenses: one training loop with a pluggable "make the training input + loss" step, and the methods."""

from robustlab.defenses.loop import (
    Callback,
    Method,
    SeededMethod,
    TrainConfig,
    TrainContext,
    TrainResult,
    train,
)

__all__ = [
    "Callback",
    "Method",
    "SeededMethod",
    "TrainConfig",
    "TrainContext",
    "TrainResult",
    "train",
]
