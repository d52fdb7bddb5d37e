"""``robustlab pseudo-at``: adversarial training against a frozen teacher's pseudo-targets (no labels)."""

from __future__ import annotations

import argparse

from robustlab.cli import common as c
from robustlab.cli import training as t
from robustlab.recipes import PseudoATConfig

EXAMPLE = (
    "robustlab pseudo-at --teacher runs/ssl --pseudo-targets kmeans --clusters 10 --dataset fashion-mnist --eps 0.1 "
    "--out runs/pseudo"
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = c.subparser(subparsers, "pseudo-at", "Targets: embedding (the teacher's features; cosine loss, or with --loss "
                    "trades DeACL's decoupled loss), kmeans (hard pseudo-labels: the teacher's k-means cluster of each "
                    "image; no labels anywhere) or linear (the argmax of the teacher's own head, self-training). Hard "
                    "pseudo-labels train a classifier with PGD-AT (--loss ce) or TRADES. The student starts from the "
                    "teacher (--init random: from scratch). Writes OUT/model.pt, report.json/md, resumable "
                    f"checkpoints; DDP under torchrun. Example: {EXAMPLE}")  # fmt: skip
    t.add_model_args(p, "--teacher", f"the teacher: {t.ENCODER_HELP}")
    p.add_argument("--pseudo-targets", dest="targets", required=True, choices=["embedding", "kmeans", "linear"],
                   help="what the student learns: the teacher's embedding, clusters or labels")  # fmt: skip
    p.add_argument("--clusters", type=c.positive_int, help="k of k-means")
    p.add_argument("--kmeans-n", type=c.positive_int, help="images k-means is fitted on")
    t.add_training_args(p, PseudoATConfig, eps=True)
    a = p.add_argument_group("adversarial training")
    a.add_argument("--loss", choices=["ce", "trades"], help="ce (PGD-AT / cosine) or trades")
    a.add_argument("--beta", type=c.nonnegative_float, help="trades weight (default: 6; embedding targets: DeACL's 2)")
    a.add_argument("--steps", type=c.positive_int, help="inner PGD steps")
    a.add_argument("--step-size", type=c.positive_float, help="inner step size (default: ce 2.5*eps/steps, else eps/4)")
    t.add_student_args(a, "a copy of the teacher")
