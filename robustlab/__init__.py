"""robustlab: attack image classifiers and make them robust, with one threat model and one evaluator."""

from typing import Any

from robustlab.errors import CheckpointError, RobustlabError

__version__ = "0.1.0"
__all__ = ["CheckpointError", "RobustlabError", "ThreatModel", "__version__", "parse_eps"]


def __getattr__(name: str) -> Any:
    """``ThreatModel`` and ``parse_eps`` load torch on first use, so ``robustlab --help`` starts without it."""
    if name in ("ThreatModel", "parse_eps"):
        from robustlab import threat

        return getattr(threat, name)
    raise AttributeError(f"module 'robustlab' has no attribute {name!r}")
