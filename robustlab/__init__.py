"""robustlab: attack image classifiers and make them robust, with one threat model and one evaluator."""

from robustlab.errors import CheckpointError, RobustlabError
from robustlab.threat import ThreatModel, parse_eps

__version__ = "0.1.0"
__all__ = ["CheckpointError", "RobustlabError", "ThreatModel", "__version__", "parse_eps"]
