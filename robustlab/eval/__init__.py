"""Evaluation: the one evaluator, metrics and reports."""

from robustlab.eval.evaluator import EvalResult, Evaluator, merge_batches, merge_results

__all__ = ["EvalResult", "Evaluator", "merge_batches", "merge_results"]
