"""Adversarial training: the supervised methods (fast AT and PGD-AT) and the catastrophic-overfitting monitor,
plugged into the one training loop of :mod:`robustlab.training`."""

from robustlab.defenses.methods import METHODS, AdversarialMethod, make_method
from robustlab.defenses.monitor import COMonitor

__all__ = ["METHODS", "AdversarialMethod", "COMonitor", "make_method"]
