"""``robustlab finetune``: SLF / ALF / AFF fine-tuning of an (SSL) encoder into a classifier, then evaluation."""

from __future__ import annotations

import argparse

import torch

from robustlab.cli.common import distributed, positive_float, positive_int, train_config
from robustlab.cli.ssl import (
    add_data_args,
    add_optim_args,
    add_run_args,
    add_teacher_args,
    add_threat_args,
    finish,
    fit,
    load_encoder,
    start,
    threat_of,
)
from robustlab.data import dataset_info, first_n, load_dataset
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
    add_teacher_args(p, flag="--encoder", what="encoder")
    p.add_argument("--protocol", required=True, choices=["slf", "alf", "aff"], help="fine-tuning protocol")
    p.add_argument(
        "--keep-head",
        action="store_true",
        help="start from the encoder's own head (e.g. a finished slf run) instead of a fresh one",
    )
    add_data_args(p)
    add_threat_args(p, required=False)
    f = p.add_argument_group("adversarial fine-tuning (alf, aff)")
    f.add_argument("--steps", type=positive_int, default=10, help="inner attack steps (default: 10)")
    f.add_argument("--step-size", type=positive_float, help="inner step size (default: alf 2.5*eps/steps, aff eps/4)")
    f.add_argument("--beta", type=float, default=6.0, help="TRADES weight for aff (default: 6)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-n", type=int, default=1000, help="test items to evaluate on (default: 1000; 0: skip)")
    e.add_argument("--pgd-steps", type=positive_int, default=20, help="PGD steps of the evaluation (default: 20)")
    e.add_argument("--pgd-restarts", type=positive_int, default=1, help="PGD restarts (default: 1)")
    e.add_argument("--autoattack", action="store_true", help="also evaluate with AutoAttack (standard)")
    add_optim_args(p, epochs=10, batch_size=256, optimizer="sgd", lr=0.1, schedule="cosine", wd=5e-4)
    add_run_args(p, "runs/finetune")
    p.set_defaults(run=distributed(_run), resume_neutral=("pgd_steps", "pgd_restarts"))  # evaluation only


def _run(args: argparse.Namespace, device: torch.device, rank: int) -> int:
    from robustlab.defenses.finetune import FineTune, prepare_classifier
    from robustlab.defenses.report import final_evaluation
    from robustlab.defenses.ssl import save_classifier

    if threat_of(args) is None and (args.protocol != "slf" or args.eval_n > 0):
        raise RobustlabError(
            f"give --eps: {args.protocol} "
            + ("trains adversarially" if args.protocol != "slf" else "is evaluated")
            + " at it (or pass --eval-n 0 to skip the evaluation of slf)"
        )
    started, out, threat, train_set = start(args)
    num_classes = dataset_info(args.dataset)["num_classes"]
    if num_classes is None:  # imagefolder: its class folders
        num_classes = len(getattr(getattr(train_set, "dataset", train_set), "classes", []) or [0])
    net, arch = load_encoder(args, args.encoder, device)
    net = prepare_classifier(net, args.protocol, num_classes, args.keep_head, args.seed).to(device)
    method = FineTune(args.protocol, threat, args.steps, args.step_size, args.beta, args.seed)
    config = train_config(args)
    if rank == 0:
        print(f"{args.protocol.upper()} of {args.encoder} on {args.dataset} ({len(train_set)} images)", flush=True)
    result = fit(args, net, method, train_set, config, out, device, rank, ("accuracy", "adv_accuracy", "kl"))
    if rank != 0:
        return 0
    save_classifier(out / "model.pt", net, arch, args.dataset, stage=f"finetune-{args.protocol}", encoder=args.encoder)
    evaluation = None
    if args.eval_n > 0:
        test_set = first_n(load_dataset(args.dataset, "test", args.data_root, args.download), args.eval_n)
        evaluation = final_evaluation(
            net, test_set, threat, autoattack=args.autoattack, pgd_steps=args.pgd_steps,
            pgd_restarts=args.pgd_restarts, seed=args.seed, device=device, progress=not args.no_progress,
        )  # fmt: skip
    info = {"method": args.protocol, "encoder": args.encoder, "threat": threat.to_dict() if threat else None}
    if args.protocol != "slf":
        info.update(steps=args.steps, step_size=method.attack.resolve_step_size(threat))
    if args.protocol == "aff":
        info["beta"] = args.beta
    finish(args, out, info, result, config, started, evaluation=evaluation, train_samples=len(train_set))
    return 0
