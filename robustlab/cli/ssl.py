"""``robustlab ssl``: stage 1, a self-supervised teacher encoder (SimCLR or SimCo) with a kNN monitor."""

from __future__ import annotations

import argparse

from robustlab.cli import common as c
from robustlab.cli import training as t
from robustlab.models import ARCHITECTURES
from robustlab.recipes import SSLConfig

EXAMPLE = "robustlab ssl --method simclr --model cnn --dataset fashion-mnist --n 10000 --epochs 5 --out runs/ssl"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = c.subparser(subparsers, "ssl", "Contrastive self-supervised training of an encoder + projector (labels unused; "
                    "a kNN monitor on a small labelled split reports feature quality each epoch). Writes OUT/model.pt "
                    "(the encoder's classifier, for robustlab deacl/pseudo-at/finetune), report.json/md and resumable "
                    "checkpoints; trains with DDP under torchrun, gathering negatives across ranks. Example: "
                    f"{EXAMPLE}")  # fmt: skip
    p.add_argument("--method", choices=["simclr", "simco"], help="the contrastive method")
    t.add_model_args(p, "--model", f"a fresh architecture ({', '.join(ARCHITECTURES)}) or an encoder to start from "
                     "(zoo:NAME, torchvision:NAME, package.module:factory, or a robustlab run folder)")  # fmt: skip
    t.add_training_args(p, SSLConfig, eps=False)
    s = p.add_argument_group("self-supervised method")
    s.add_argument("--temperature", type=c.positive_float, help="InfoNCE / SimCo tau_alpha")
    s.add_argument("--tau-beta", type=c.positive_float, help="SimCo's second temperature")
    s.add_argument("--proj-hidden", type=c.positive_int, help="projector hidden width")
    s.add_argument("--proj-dim", type=c.positive_int, help="projection dimension")
    s.add_argument("--knn-n", type=c.nonnegative_int, help="labelled items of the kNN monitor (0: off)")
