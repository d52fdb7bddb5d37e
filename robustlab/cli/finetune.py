"""``robustlab finetune``: SLF / ALF / AFF fine-tuning of an (SSL) encoder into a classifier, then evaluation."""

from __future__ import annotations

import argparse

from robustlab.cli import common as c
from robustlab.cli import training as t
from robustlab.recipes import DEFAULT_LR, FineTuneConfig

EXAMPLE = (
    "robustlab finetune --encoder runs/deacl --protocol slf --dataset fashion-mnist --eps 0.1 --out runs/slf; "
    "then robustlab attack --model runs/slf/model.pt ..."
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = c.subparser(subparsers, "finetune", "SLF trains a fresh linear head on clean data over the frozen encoder; ALF "
                    "trains it on PGD examples; AFF fine-tunes every weight with TRADES. Then evaluates clean and PGD "
                    "(and with --autoattack AutoAttack) accuracy at --eps. Writes OUT/model.pt, a classifier robustlab "
                    f"attack / eval load directly, and report.json/md. Example: {EXAMPLE}")  # fmt: skip
    t.add_model_args(p, "--encoder", f"the encoder: {t.ENCODER_HELP}")
    p.add_argument("--protocol", required=True, choices=["slf", "alf", "aff"], help="fine-tuning protocol")
    p.add_argument("--keep-head", action="store_true", help="start from the encoder's own head (e.g. an slf run's)")
    t.add_training_args(p, FineTuneConfig, unset="none; needed by alf, aff and the evaluation")
    lr = p._option_string_actions["--lr"]  # its default depends on the protocol
    lr.help = "learning rate (default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_LR.items()) + ")"
    f = p.add_argument_group("adversarial fine-tuning (alf, aff)")
    f.add_argument("--steps", type=c.positive_int, help="inner attack steps")
    f.add_argument("--step-size", type=c.positive_float, help="inner step size (default: alf 2.5*eps/steps, aff eps/4)")
    f.add_argument("--beta", type=c.nonnegative_float, help="TRADES weight for aff")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-n", type=c.nonnegative_int, help="test items to evaluate on (0: skip)")
    e.add_argument("--eval-steps", type=c.positive_int, metavar="T", help="PGD steps")
    e.add_argument("--eval-restarts", type=c.positive_int, metavar="R", help="PGD restarts")
    e.add_argument("--autoattack", action="store_true", help="also evaluate with AutoAttack (standard)")
