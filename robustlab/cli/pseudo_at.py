"""``robustlab pseudo-at``: adversarial training against a frozen teacher's pseudo-targets (no labels)."""

from __future__ import annotations

import argparse

import torch

from robustlab.cli import common as c
from robustlab.errors import RobustlabError

EXAMPLE = (
    "robustlab pseudo-at --teacher runs/ssl --pseudo-targets kmeans --clusters 10 --dataset fashion-mnist --eps 0.1 "
    "--out runs/pseudo"
)
KEYS = ("cos_teacher", "cos_teacher_adv", "adv_accuracy", "pseudo_label_agreement")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pseudo-at",
        help="pseudo-supervised adversarial training: a robust student of a frozen teacher's embedding, "
        "k-means clusters or linear-head predictions",
        description="Targets: embedding (the teacher's features; cosine loss, or with --loss trades DeACL's "
        "decoupled loss), kmeans (hard pseudo-labels: the teacher's k-means cluster of each image; no labels "
        "anywhere) or linear (the argmax of the teacher's own head, self-training). Hard pseudo-labels train "
        "a classifier with PGD-AT (--loss ce) or TRADES. The student starts from the teacher (--init random: "
        f"from scratch). Writes OUT/model.pt, report.json/md, resumable checkpoints; DDP under torchrun. Example: "
        f"{EXAMPLE}",
    )
    c.add_teacher_args(p)
    p.add_argument(
        "--pseudo-targets", dest="targets", choices=["embedding", "kmeans", "linear"],
        help="what the student learns (required): the teacher's embedding, its k-means clusters or its head's labels",
    )  # fmt: skip
    p.add_argument("--targets", dest="targets", choices=["embedding", "kmeans", "linear"], default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # its name before 0.2 (--targets means models in robustlab transfer)
    p.add_argument("--clusters", type=c.positive_int, default=10, help="k of k-means (default: 10)")
    p.add_argument(
        "--kmeans-n", type=c.positive_int, default=10000, help="images k-means is fitted on (default: 10000)"
    )
    c.add_training_args(p, "pseudo-at", eps=True)
    a = p.add_argument_group("adversarial training")
    a.add_argument("--loss", choices=["ce", "trades"], default="ce", help="ce (PGD-AT / cosine) or trades")
    a.add_argument("--beta", type=c.nonnegative_float, help="trades weight (default: 6; embedding targets: DeACL's 2)")
    a.add_argument("--steps", type=c.positive_int, default=5, help="inner PGD steps (default: 5)")
    a.add_argument(
        "--step-size", type=c.positive_float, help="inner step size (default: pgd 2.5*eps/steps, else eps/4)"
    )
    c.add_student_args(a, "a copy of the teacher")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.targets is None:
        raise RobustlabError("give --pseudo-targets embedding, kmeans or linear (what the student learns)")
    return c.run_training_command(args, lambda device: setup(args, device), KEYS)


def setup(args: argparse.Namespace, device: torch.device):  # -> TrainingSetup
    """What ``robustlab pseudo-at`` trains: a student of the teacher on its pseudo-targets; model.pt is its
    classifier."""
    from robustlab.ssl import Augment, PseudoAT, PseudoLabeler, kmeans_labeler, make_pseudo_student
    from robustlab.training import TrainingSetup

    if args.targets != "kmeans" and args.clusters != 10:
        raise RobustlabError("--clusters only applies to --pseudo-targets kmeans")
    threat, train_set = c.threat_of(args), c.split_of(args, "train", args.n)
    teacher, arch = c.load_teacher(args, args.teacher, device)
    labeler = PseudoLabeler(teacher) if args.targets == "linear" else None
    if args.targets == "kmeans":
        images = torch.stack([train_set[i][0] for i in range(min(args.kmeans_n, len(train_set)))]).to(device)
        labeler = kmeans_labeler(teacher, images, args.clusters, seed=args.seed)  # same on every rank (seeded)
    num_classes = labeler.num_classes if labeler is not None else None
    student = make_pseudo_student(teacher, args.targets, num_classes, args.init, args.seed).to(device)
    method = PseudoAT(
        args.targets, threat, teacher_net=teacher if args.targets == "embedding" else None, labeler=labeler,
        loss=args.loss, beta=args.beta, steps=args.steps, step_size=args.step_size, augment=Augment(args.augment),
        seed=args.seed,
    )  # fmt: skip
    net = student.net if args.targets == "embedding" else student
    return TrainingSetup(
        student, method, train_set, c.train_config(args), saved=net, summary_keys=KEYS, fits=(teacher,),
        method_info={"teacher": args.teacher, "clusters": num_classes, "init": args.init, "augment": args.augment,
                     "steps": args.steps},
        report={"dataset": args.dataset},
        model_file={"arch": arch, "dataset": args.dataset, "stage": "pseudo-at", "targets": args.targets,
                    "outputs": "clusters" if args.targets == "kmeans" else "classes"},
        banner=f"pseudo-AT ({args.targets} targets, {args.loss}) on {args.dataset} ({len(train_set)} images), "
        f"teacher {args.teacher}, student init {args.init}, {threat.norm} eps={threat.eps:.4g}",
    )  # fmt: skip
