"""``robustlab attack``: run one attack on a model over a dataset and report robust accuracy."""

from __future__ import annotations

import argparse

from robustlab.attacks import attack_help
from robustlab.cli import common as c
from robustlab.eval import AttackConfig, run_attack

EXAMPLE = "robustlab attack --model zoo:fmnist-cnn --dataset fashion-mnist --n 1000 --attacks pgd --eps 0.1"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = c.subparser(
        subparsers, "attack",
        "Attack every sample of a dataset split and report clean accuracy, (top-1) robust accuracy, "
        f"attack success rate and top-k statistics (table on stdout, OUT/report.json). Example: {EXAMPLE}",
    )  # fmt: skip
    c.add_model_args(p)
    c.add_data_args(p)
    p.add_argument("--attacks", dest="attack", required=True, metavar="SPEC", help=f"one attack: {attack_help()}")
    p.add_argument(
        "--target", help="targeted attack towards a class index, 'random' or 'least-likely' (default: untargeted)"
    )
    p.add_argument(
        "--topk", type=c.topk_list, help="k's for top-k ASR and robust accuracy (default: 1,2,3,5; 1,5,10 for >10)"
    )
    p.add_argument("--save-adv", metavar="FILE", help="save {'x_adv', 'y', 'index'} as a torch file (default: not)")
    c.add_threat_args(p)
    c.add_attack_args(p)
    c.add_run_args(p, out_default="runs/attack")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = run_attack(c.model_source(args), c.data_source(args, args.model), c.config_from(AttackConfig, args),
                        args.out, save_adv=args.save_adv, **c.run_options(args))  # fmt: skip
    loss = report.attack.get("loss")
    setting = f"{report.name}{f' ({loss})' if loss else ''}, {report.threat['norm']} eps={report.threat['eps']:.4g}"
    print(f"{args.model} on {args.dataset}/{args.split}: {setting}")
    print(report.to_markdown(header=False))  # the line above names model and attack
    saved = f"; adversarial examples: {report.files['adversarial_examples']}" if args.save_adv else ""
    print(f"report: {report.files['json']}{saved}", flush=True)
    return 0
