"""Evaluation: the one evaluator, metrics, typed reports, and evaluation runs in one call."""

from robustlab.eval.evaluator import EvalResult, Evaluator, merge_batches, merge_results
from robustlab.eval.report import EvalReport
from robustlab.eval.run import EvalConfig, load_results, run_evaluation
from robustlab.eval.sources import DataSource, ModelSource

__all__ = [
    "DataSource",
    "EvalConfig",
    "EvalReport",
    "EvalResult",
    "Evaluator",
    "ModelSource",
    "load_results",
    "merge_batches",
    "merge_results",
    "run_evaluation",
]
