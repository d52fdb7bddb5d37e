"""The one training loop and the one training run shared by adversarial and self-supervised training."""

from robustlab.training.context import Callback, Decision, TrainContext
from robustlab.training.loop import TrainConfig, TrainResult, lr_at, train
from robustlab.training.method import Method
from robustlab.training.report import FinalEvaluation, TrainReport, final_evaluation
from robustlab.training.run import TrainingRun, TrainingSetup, run_training

__all__ = [
    "Callback",
    "Decision",
    "FinalEvaluation",
    "Method",
    "TrainConfig",
    "TrainContext",
    "TrainReport",
    "TrainResult",
    "TrainingRun",
    "TrainingSetup",
    "final_evaluation",
    "lr_at",
    "run_training",
    "train",
]
