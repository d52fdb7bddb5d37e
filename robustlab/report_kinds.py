"""Every kind of report robustlab has, loaded: import this module before reading a report folder of any kind
(``robustlab report`` and ``robustlab compare`` do). Each kind registers itself where it is defined
(:func:`robustlab.reports.register_report`); this module only imports them, so :mod:`robustlab.reports` itself
imports none of them and no package imports another in a circle."""

from robustlab.eval.attack_report import AttackReport
from robustlab.eval.report import EvalReport
from robustlab.eval.transfer import TransferResult
from robustlab.reports.compare import compare_runs
from robustlab.reports.rebuild import rebuild_report
from robustlab.training.report import TrainReport

KINDS = (EvalReport, AttackReport, TransferResult, TrainReport)  # robustlab's own report classes

__all__ = ["KINDS", "AttackReport", "EvalReport", "TrainReport", "TransferResult", "compare_runs", "rebuild_report"]
