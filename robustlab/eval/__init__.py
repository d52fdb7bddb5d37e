"""Evaluation: the one evaluator, metrics, typed reports, and runs in one call (``run_evaluation``,
``run_attack``, ``run_transfer``: what ``robustlab eval``, ``attack`` and ``transfer`` do)."""

from robustlab.eval.attack_report import AttackReport
from robustlab.eval.attack_run import run_attack
from robustlab.eval.configs import AttackConfig, EvalConfig, TransferConfig
from robustlab.eval.evaluator import EvalResult, Evaluator, merge_batches, merge_results
from robustlab.eval.report import EvalReport
from robustlab.eval.run import load_results, run_evaluation
from robustlab.eval.sources import DataSource, ModelSource
from robustlab.eval.transfer_run import run_transfer

__all__ = [
    "AttackConfig",
    "AttackReport",
    "DataSource",
    "EvalConfig",
    "EvalReport",
    "EvalResult",
    "Evaluator",
    "ModelSource",
    "TransferConfig",
    "load_results",
    "merge_batches",
    "merge_results",
    "run_attack",
    "run_evaluation",
    "run_transfer",
]
