"""Every kind of training run as one frozen, typed config (its defaults, its ``fingerprint()``, its ``build()``),
run with one call::

    from robustlab.recipes import ATConfig
    from robustlab.threat import ThreatModel
    from robustlab.training import run_training

    report = run_training(ATConfig(method="noiseaug", model="cnn", dataset="fashion-mnist",
                                   threat=ThreatModel("linf", 0.1), epochs=10), "runs/na")

:data:`TRAINING_KINDS` maps each command (``train``, ``ssl``, ``deacl``, ``pseudo-at``, ``finetune``) to its config.
"""

from robustlab.recipes.base import RESUME_NEUTRAL, TrainingRunConfig
from robustlab.recipes.deacl import DeACLConfig
from robustlab.recipes.finetune import DEFAULT_LR, FineTuneConfig
from robustlab.recipes.pseudo_at import PseudoATConfig
from robustlab.recipes.ssl_teacher import SSLConfig
from robustlab.recipes.supervised import ATConfig

# a plain dict: robustlab.registry's Registry had not landed when this was written
TRAINING_KINDS: dict[str, type[TrainingRunConfig]] = {
    c.kind: c for c in (ATConfig, SSLConfig, DeACLConfig, PseudoATConfig, FineTuneConfig)
}

__all__ = [
    "DEFAULT_LR",
    "RESUME_NEUTRAL",
    "TRAINING_KINDS",
    "ATConfig",
    "DeACLConfig",
    "FineTuneConfig",
    "PseudoATConfig",
    "SSLConfig",
    "TrainingRunConfig",
]
