"""``robustlab deacl``: stage 2 of DeACL, a robust student encoder distilled from a frozen SSL teacher."""

from __future__ import annotations

import argparse

import torch

from robustlab.cli import common as c

EXAMPLE = "robustlab deacl --teacher runs/ssl --dataset fashion-mnist --eps 0.1 --epochs 5 --out runs/deacl"
KEYS = ("cos_teacher", "cos_adv_clean")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "deacl",
        help="stage 2: DeACL, a robust student encoder learns a frozen SSL teacher's features (no labels)",
        description="The student (initialised from the teacher) minimises -cos(f(x), T(x)) - beta * cos(f(x'), "
        "f(x)), x' a feature-space PGD maximising -cos(f(x'), T(x)). Labels are never used. Writes OUT/model.pt "
        "(the student encoder's classifier: fine-tune it with robustlab finetune), report.json/md, resumable "
        f"checkpoints; DDP under torchrun. Example: {EXAMPLE}",
    )
    c.add_teacher_args(p)
    c.add_training_args(p, "deacl", eps="8/255")
    d = p.add_argument_group("DeACL (defaults: the paper's)")
    d.add_argument("--beta", type=c.nonnegative_float, default=2.0, help="weight of the adversarial term (default: 2)")
    d.add_argument("--steps", type=c.positive_int, default=5, help="steps of the inner feature PGD (default: 5)")
    d.add_argument("--step-size", type=c.positive_float, help="inner PGD step size (default: eps/4)")
    c.add_student_args(d, "a copy of the teacher (the paper)")
    d.add_argument(
        "--center", action="store_true",
        help="cosines between batch-centred features (for encoders whose post-ReLU features share a large "
        "common direction, e.g. the small CNN; the paper's loss is uncentred)",
    )  # fmt: skip
    d.add_argument(
        "--projector", action="store_true",
        help="ProFeAT: also distil through the teacher's SSL projector (frozen; from its ssl run folder), the teacher "
        "seeing a weak augmentation (pair with --augment strong)",
    )  # fmt: skip
    d.add_argument(
        "--anneal-augment", action="store_true",
        help="DynACL: the student's augmentation decays from strong to none over the run (instead of --augment)",
    )  # fmt: skip
    d.add_argument(
        "--width-factor", type=c.positive_int, default=1,
        help="a student K times wider than the teacher (cnn, mlp; needs --init random; default: 1)",
    )  # fmt: skip
    p.set_defaults(run=lambda args: c.run_training_command(args, lambda device: setup(args, device), KEYS))


def setup(args: argparse.Namespace, device: torch.device):  # -> TrainingSetup
    """What ``robustlab deacl`` trains: a student encoder of the teacher with DeACL's loss; model.pt is its
    classifier."""
    from robustlab.ssl import Augment, DeACL, arch_kwargs_of, check_width, frozen_teacher, make_student
    from robustlab.ssl.augment import AnnealedAugment
    from robustlab.ssl.encoder import load_projector
    from robustlab.training import TrainingSetup

    check_width(args.width_factor, args.init)
    projector = load_projector(args.teacher, args.trust_checkpoint) if args.projector else None
    threat, train_set = c.threat_of(args), c.split_of(args, "train", args.n)
    teacher_net, arch = c.load_teacher(args, args.teacher, device)
    student = make_student(teacher_net, args.init, args.seed, args.width_factor).to(device)
    augment = AnnealedAugment() if args.anneal_augment else Augment(args.augment)
    teacher_augment = Augment("weak") if projector is not None else None  # ProFeAT: a weak view for the teacher
    method = DeACL(frozen_teacher(teacher_net), threat, args.beta, args.steps, args.step_size, augment, args.seed,
                   center=args.center, projector=projector, teacher_augment=teacher_augment)  # fmt: skip
    options = [("centred cosines", args.center), ("projector (ProFeAT)", args.projector),
               ("annealed augmentation (DynACL)", args.anneal_augment),
               (f"{args.width_factor}x wider student", args.width_factor > 1)]  # fmt: skip
    banner = (
        f"DeACL on {args.dataset} ({len(train_set)} images, labels unused), teacher {args.teacher}, {threat.norm} "
        f"eps={threat.eps:.4g}, beta={args.beta}, PGD-{args.steps}, student init {args.init}"
        + "".join(f", {name}" for name, on in options if on)
    )
    return TrainingSetup(
        student, method, train_set, c.train_config(args), saved=student.net, summary_keys=KEYS, fits=(teacher_net,),
        method_info={"teacher": args.teacher, "augment": args.augment, "init": args.init},
        report={"dataset": args.dataset}, banner=banner,
        model_file={"arch": arch, "dataset": args.dataset, "stage": "deacl", "teacher": args.teacher,
                    "arch_kwargs": arch_kwargs_of(student.net)},
    )  # fmt: skip
