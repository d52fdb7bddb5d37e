"""``robustlab deacl``: stage 2 of DeACL, a robust student encoder distilled from a frozen SSL teacher."""

from __future__ import annotations

import argparse

import torch

from robustlab.cli.common import distributed, positive_float, positive_int, train_config
from robustlab.cli.ssl import (
    add_data_args,
    add_optim_args,
    add_run_args,
    add_student_args,
    add_teacher_args,
    add_threat_args,
    finish,
    fit,
    last_epoch_rows,
    load_encoder,
    start,
)

EXAMPLE = "robustlab deacl --teacher runs/ssl --dataset fashion-mnist --eps 0.1 --epochs 5 --out runs/deacl"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "deacl",
        help="stage 2: DeACL, a robust student encoder learns a frozen SSL teacher's features (no labels)",
        description="The student (initialised from the teacher) minimises -cos(f(x), T(x)) - beta * cos(f(x'), "
        "f(x)), x' a feature-space PGD maximising -cos(f(x'), T(x)). Labels are never used. Writes OUT/model.pt "
        "(the student encoder's classifier: fine-tune it with robustlab finetune), report.json/md, resumable "
        f"checkpoints; DDP under torchrun. Example: {EXAMPLE}",
    )
    add_teacher_args(p)
    add_data_args(p)
    add_threat_args(p, required=False, default_eps="8/255")
    d = p.add_argument_group("DeACL (defaults: the paper's)")
    d.add_argument("--beta", type=float, default=2.0, help="weight of the adversarial term (default: 2)")
    d.add_argument("--steps", type=positive_int, default=5, help="steps of the inner feature PGD (default: 5)")
    d.add_argument("--step-size", type=positive_float, help="inner PGD step size (default: eps/4)")
    add_student_args(d, "a copy of the teacher (the paper)")
    d.add_argument(
        "--center",
        action="store_true",
        help="cosines between batch-centred features (for encoders whose post-ReLU features share a large "
        "common direction, e.g. the small CNN; the paper's loss is uncentred)",
    )
    add_optim_args(p, epochs=100, batch_size=256, optimizer="sgd", lr=0.5, schedule="cosine", wd=5e-4)
    add_run_args(p, "runs/deacl")
    p.set_defaults(run=distributed(_run))


def _run(args: argparse.Namespace, device: torch.device, rank: int) -> int:
    from robustlab.defenses.deacl import DeACL, frozen_teacher, make_student
    from robustlab.defenses.ssl import Augment, save_classifier

    started, out, threat, train_set = start(args)
    teacher_net, arch = load_encoder(args, args.teacher, device)
    student = make_student(teacher_net, args.init, args.seed).to(device)
    method = DeACL(
        frozen_teacher(teacher_net),
        threat,
        args.beta,
        args.steps,
        args.step_size,
        Augment(args.augment),
        args.seed,
        center=args.center,
    )
    config = train_config(args)
    if rank == 0:
        print(
            f"DeACL on {args.dataset} ({len(train_set)} images, labels unused), teacher {args.teacher}, "
            f"{threat.norm} eps={threat.eps:.4g}, beta={args.beta}, PGD-{args.steps}, student init {args.init}"
            + (", centred cosines" if args.center else ""),
            flush=True,
        )
    keys = ("cos_teacher", "cos_adv_clean")
    result = fit(args, student, method, train_set, config, out, device, rank, keys)
    if rank != 0:
        return 0
    save_classifier(out / "model.pt", student.net, arch, args.dataset, stage="deacl", teacher=args.teacher)
    info = {
        "method": "deacl",
        "teacher": args.teacher,
        "beta": args.beta,
        "steps": args.steps,
        "step_size": method.attack.resolve_step_size(threat),
        "augment": args.augment,
        "init": args.init,
        "center": args.center,
        "threat": threat.to_dict(),
    }
    finish(args, out, info, result, config, started, rows=last_epoch_rows(result, keys), train_samples=len(train_set))
    return 0
