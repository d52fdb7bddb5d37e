"""Every kind of training run as one frozen, typed config (its defaults, its ``fingerprint()``, its ``build()``),
run with one call::

    from robustlab.recipes import ATConfig
    from robustlab.threat import ThreatModel
    from robustlab.training import run_training

    report = run_training(ATConfig(method="noiseaug", model="cnn", dataset="fashion-mnist",
                                   threat=ThreatModel("linf", 0.1), epochs=10), "runs/na")

:data:`TRAINING_KINDS` (a :class:`~robustlab.registry.Registry`) gives each command's config by name (``train``,
``ssl``, ``deacl``, ``pseudo-at``, ``finetune``): ``TRAINING_KINDS.get("deacl")``.
"""

from robustlab.recipes.base import RESUME_NEUTRAL, TrainingRunConfig
from robustlab.recipes.deacl import DeACLConfig
from robustlab.recipes.finetune import DEFAULT_LR, FineTuneConfig
from robustlab.recipes.pseudo_at import PseudoATConfig
from robustlab.recipes.ssl_teacher import SSLConfig
from robustlab.recipes.supervised import ATConfig
from robustlab.registry import Registry

TRAINING_KINDS: Registry[type[TrainingRunConfig]] = Registry("training kind")
for _config in (ATConfig, SSLConfig, DeACLConfig, PseudoATConfig, FineTuneConfig):
    TRAINING_KINDS.register(_config.kind, _config)

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
