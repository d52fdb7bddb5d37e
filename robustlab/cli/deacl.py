"""``robustlab deacl``: stage 2 of DeACL, a robust student encoder distilled from a frozen SSL teacher."""

from __future__ import annotations

import argparse

from robustlab.cli import common as c
from robustlab.cli import training as t
from robustlab.recipes import DeACLConfig

EXAMPLE = "robustlab deacl --teacher runs/ssl --dataset fashion-mnist --eps 0.1 --epochs 5 --out runs/deacl"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = c.subparser(subparsers, "deacl", "The student (initialised from the teacher) minimises -cos(f(x), T(x)) - beta "
                    "* cos(f(x'), f(x)), x' a feature-space PGD maximising -cos(f(x'), T(x)). Labels are never used. "
                    "Writes OUT/model.pt (the student encoder's classifier: fine-tune it with robustlab finetune), "
                    f"report.json/md, resumable checkpoints; DDP under torchrun. Example: {EXAMPLE}")  # fmt: skip
    t.add_model_args(p, "--teacher", f"the teacher: {t.ENCODER_HELP}")
    t.add_training_args(p, DeACLConfig)
    d = p.add_argument_group("DeACL (defaults: the paper's)")
    d.add_argument("--beta", type=c.nonnegative_float, help="weight of the adversarial term")
    d.add_argument("--steps", type=c.positive_int, help="steps of the inner feature PGD")
    d.add_argument("--step-size", type=c.positive_float, help="inner PGD step size (default: eps/4)")
    t.add_student_args(d, "a copy of the teacher (the paper)")
    d.add_argument("--center", action="store_true", help="cosines between batch-centred features (for encoders whose "
                   "post-ReLU features share a large common direction, e.g. the small CNN; the paper's loss is "
                   "uncentred)")  # fmt: skip
    d.add_argument("--projector", action="store_true", help="ProFeAT: also distil through the teacher's SSL projector "
                   "(frozen; from its ssl run folder), the teacher seeing a weak augmentation (pair with --augment "
                   "strong)")  # fmt: skip
    d.add_argument("--anneal-augment", action="store_true", help="DynACL: the student's augmentation decays from "
                   "strong to none over the run (not --augment)")  # fmt: skip
    d.add_argument("--width-factor", type=c.positive_int, help="a student K times wider than the teacher "
                   "(cnn, mlp; needs --init random)")  # fmt: skip
