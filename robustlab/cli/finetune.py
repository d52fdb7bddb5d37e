"""``robustlab finetune``: SLF / ALF / AFF fine-tuning of an (SSL) encoder into a classifier, then evaluation."""

from __future__ import annotations

import argparse

import torch

from robustlab.cli import common as c
from robustlab.errors import RobustlabError

EXAMPLE = (
    "robustlab finetune --encoder runs/deacl --protocol slf --dataset fashion-mnist --eps 0.1 --out runs/slf; "
    "then robustlab attack --model runs/slf/model.pt ..."
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune an encoder into a classifier: slf (linear), alf (adversarial linear), aff (TRADES, full)",
        description="SLF trains a fresh linear head on clean data over the frozen encoder; ALF trains it on PGD "
        "examples; AFF fine-tunes every weight with TRADES. Then evaluates clean and PGD (and with --autoattack "
        "AutoAttack) accuracy at --eps. Writes OUT/model.pt, a classifier robustlab attack / eval load directly, "
        f"and report.json/md. Example: {EXAMPLE}",
    )
    c.add_teacher_args(p, flag="--encoder", what="encoder")
    p.add_argument("--protocol", required=True, choices=["slf", "alf", "aff"], help="fine-tuning protocol")
    p.add_argument("--keep-head", action="store_true", help="start from the encoder's own head (e.g. an slf run's)")
    c.add_training_args(p, "finetune", eps=None)
    lr = p._option_string_actions["--lr"]  # its default depends on the protocol
    lr.default, lr.help = None, "learning rate (default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_LR.items()) + ")"
    f = p.add_argument_group("adversarial fine-tuning (alf, aff)")
    f.add_argument("--steps", type=c.positive_int, default=10, help="inner attack steps (default: 10)")
    f.add_argument("--step-size", type=c.positive_float, help="inner step size (default: alf 2.5*eps/steps, aff eps/4)")
    f.add_argument("--beta", type=c.nonnegative_float, default=6.0, help="TRADES weight for aff (default: 6)")
    e = p.add_argument_group("evaluation")
    e.add_argument(
        "--eval-n", type=c.nonnegative_int, default=1000, help="test items to evaluate on (0: skip; default: 1000)"
    )
    e.add_argument("--eval-steps", dest="pgd_steps", type=c.positive_int, default=20, metavar="T",
                   help="PGD steps of the evaluation (default: 20)")  # fmt: skip
    e.add_argument("--eval-restarts", dest="pgd_restarts", type=c.positive_int, default=1, metavar="R",
                   help="PGD restarts of the evaluation (default: 1)")  # fmt: skip
    # their names before 0.2 (--pgd-steps means the inner training attack's steps in robustlab train)
    hidden = {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
    e.add_argument("--pgd-steps", dest="pgd_steps", type=c.positive_int, **hidden)
    e.add_argument("--pgd-restarts", dest="pgd_restarts", type=c.positive_int, **hidden)
    e.add_argument("--autoattack", action="store_true", help="also evaluate with AutoAttack (standard)")
    p.set_defaults(run=run, resume_neutral=("pgd_steps", "pgd_restarts"))  # evaluation only


# A fresh linear head over frozen features trains sanely at 0.03 (first-epoch loss ~1.5 over the zoo's SimCLR and
# DeACL encoders; at 0.1 DeACL's larger features give a first-epoch loss of 6-17); adversarial protocols keep 0.1.
DEFAULT_LR = {"slf": 0.03, "alf": 0.1, "aff": 0.1}


def run(args: argparse.Namespace) -> int:
    if args.lr is None:
        args.lr = DEFAULT_LR[args.protocol]
    if args.eps is None and (args.protocol != "slf" or args.eval_n > 0):
        raise RobustlabError(
            f"give --eps: {args.protocol} "
            + ("trains adversarially" if args.protocol != "slf" else "is evaluated")
            + " at it (or pass --eval-n 0 to skip the evaluation of slf)"
        )
    return c.run_training_command(args, lambda device: setup(args, device), ("accuracy", "adv_accuracy", "kl"))


def setup(args: argparse.Namespace, device: torch.device):  # -> TrainingSetup
    """What ``robustlab finetune`` trains: the encoder's classifier with a fresh (or its own) head, then evaluates."""
    from robustlab.data import dataset_info
    from robustlab.ssl import FineTune, prepare_classifier
    from robustlab.training import FinalEvaluation, TrainingSetup

    threat, train_set = c.threat_of(args), c.split_of(args, "train", args.n)
    num_classes = dataset_info(args.dataset)["num_classes"]
    if num_classes is None:  # imagefolder: its class folders
        num_classes = len(getattr(getattr(train_set, "dataset", train_set), "classes", []) or [0])
    net, arch = c.load_teacher(args, args.encoder, device)
    net = prepare_classifier(net, args.protocol, num_classes, args.keep_head, args.seed).to(device)
    method = FineTune(args.protocol, threat, args.steps, args.step_size, args.beta, args.seed)
    evaluation = None
    if args.eval_n > 0:
        evaluation = FinalEvaluation(c.split_of(args, "test", args.eval_n), threat, args.autoattack, args.pgd_steps,
                                     args.pgd_restarts, seed=args.seed, progress=not args.no_progress)  # fmt: skip
    stage = f"finetune-{args.protocol}"
    return TrainingSetup(
        net, method, train_set, c.train_config(args), evaluation=evaluation, saved=net, num_classes=num_classes,
        method_info={"encoder": args.encoder}, report={"dataset": args.dataset},
        model_file={"arch": arch, "dataset": args.dataset, "stage": stage, "encoder": args.encoder},
        banner=f"{args.protocol.upper()} of {args.encoder} on {args.dataset} ({len(train_set)} images), "
        f"{args.optimizer} lr {args.lr:g}",
    )  # fmt: skip
