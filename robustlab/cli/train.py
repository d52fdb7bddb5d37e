"""``robustlab train``: adversarial training (NoiseAug, FGSM-RS, N-FGSM, GradAlign, PGD-AT, ...) with a
catastrophic-overfitting monitor, resumable checkpoints, DDP under torchrun and a final evaluation."""

from __future__ import annotations

import argparse

from robustlab.cli import common as c
from robustlab.cli import training as t
from robustlab.defenses.methods import METHODS, NOISE_KINDS
from robustlab.defenses.monitor import ON_CO
from robustlab.models import ARCHITECTURES
from robustlab.recipes import ATConfig

EXAMPLE = "robustlab train --method noiseaug --model cnn --dataset fashion-mnist --eps 0.1 --epochs 10 --out runs/na"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = c.subparser(subparsers, "train", "Train a model with one of the (fast) adversarial training methods, watch for "
                    "catastrophic overfitting, checkpoint every epoch (resume with --resume) and evaluate at the end "
                    f"(OUT/report.json, report.md, curves.png, model.pt). Under torchrun it trains with DDP. Example: "
                    f"{EXAMPLE}")  # fmt: skip
    p.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    t.add_model_args(p, "--model", f"a fresh architecture ({', '.join(ARCHITECTURES)}) or a model to start from: "
                     "zoo:NAME, a run folder, model.pt, torchvision:NAME (--num-classes), module:factory")  # fmt: skip
    p.add_argument("--num-classes", type=c.positive_int, help="outputs of the model (default: the training set's "
                   "classes for an architecture, else the model's)")  # fmt: skip
    t.add_training_args(p, ATConfig, eps=True)
    g = p.add_argument_group("method")
    g.add_argument("--step-size", type=c.positive_float, help="step size (default: 1.25*eps fgsm-rs/noiseaug/"
                   "gradalign, eps fgsm/n-fgsm, eps/4 pgd)")  # fmt: skip
    g.add_argument("--noise", choices=NOISE_KINDS, help="noiseaug: noise distribution (default: uniform)")
    g.add_argument("--noise-sigma", type=c.nonnegative_float, help="noiseaug: noise scale in units of eps (default: 2)")
    g.add_argument("--noise-multiple", type=c.nonnegative_float, help="n-fgsm: noise U(-m eps, m eps) (default: 2)")
    g.add_argument("--gradalign-lambda", type=c.nonnegative_float, help="gradalign: regulariser weight (default: 0.2)")
    g.add_argument("--steps", type=c.positive_int, metavar="T", help="pgd: steps of the inner PGD (default: 10)")
    m = p.add_argument_group("catastrophic-overfitting monitor and evaluation")
    m.add_argument("--monitor-n", type=c.nonnegative_int, help="training samples the monitor attacks (0: off)")
    m.add_argument("--monitor-every", type=c.nonnegative_int, help="also check every N steps (0: epochs only)")
    m.add_argument("--on-co", choices=ON_CO, help="on CO: stop, rollback or continue")
    m.add_argument("--eval-n", type=c.nonnegative_int, help="test items of the final PGD-50-10 evaluation (its cost "
                   "is ~500 forward+backward passes per item: lower it, or 0 to skip)")  # fmt: skip
    m.add_argument("--autoattack", action="store_true", help="also evaluate with AutoAttack (standard)")
    m.add_argument("--no-eval", dest="eval_n", action="store_const", const=0, help="skip the final evaluation")
    p.add_argument("--export", metavar="FILE", help="also save the final model's state dict here (default: not)")
