"""``robustlab transfer``: craft adversarial examples on surrogates, judge them on targets, by top-k ASR."""

from __future__ import annotations

import argparse

from robustlab.attacks import attack_help
from robustlab.cli import common as c
from robustlab.eval import TransferConfig, run_transfer

EXAMPLE = (
    "robustlab transfer --source zoo:fmnist-cnn --targets zoo:fmnist-cnn-s1,zoo:fmnist-mlp "
    "--dataset fashion-mnist --n 1000 --attacks fgsm,ifgsm,ifgsm+normalized-ce --eps 0.1"
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = c.subparser(
        subparsers, "transfer",
        "Craft adversarial examples with each attack on each surrogate (white-box numbers included), "
        "evaluate them on every target, and report a surrogate x target matrix of top-k attack success rates, "
        "interest class rank statistics, OUT/report.json, OUT/report.md, OUT/heatmap.png and "
        f"OUT/topk_curves.png. Example: {EXAMPLE}",
    )  # fmt: skip
    p.add_argument("--source", action="append", required=True, metavar="SPEC[,SPEC...]",
                   help="a surrogate model spec (SPEC@FILE: the weights in FILE, e.g. torchvision:resnet18@r18.pt); "
                   "several specs joined by commas form one ensemble (averaged logits); repeat --source for more rows")
    p.add_argument("--targets", required=True, metavar="SPEC,SPEC,...",
                   help="comma-separated target model specs (SPEC@FILE: with the weights in FILE)")
    c.add_data_args(p)
    p.add_argument("--attacks", default=c.defaults_of(TransferConfig)["attacks"],
                   help=f"comma-separated: {attack_help()}; mifgsm(diversity_prob=0.5) is DI-MI-FGSM")
    p.add_argument("--topk", type=c.topk_list, help="k's for the tables (default: 1,2,3,5 for 10 classes, else 1,5,10)")
    p.add_argument("--save-adv", metavar="FILE",
                   help="save {'x_adv': {attack: {source: tensor}}, 'y', 'index'} (default: not)")
    c.add_threat_args(p)
    c.add_attack_args(p)
    c.add_run_args(p, out_default="runs/transfer")
    p.set_defaults(run=run)


def _specs(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def run(args: argparse.Namespace) -> int:
    result = run_transfer([_specs(s) for s in args.source], _specs(args.targets),
                          c.data_source(args, args.targets.split(",")[0]), c.config_from(TransferConfig, args),
                          args.out, save_adv=args.save_adv, **c.run_options(args))  # fmt: skip
    print(f"{args.dataset}/{args.split}, n = {result.n}, {result.threat.norm} eps = {result.threat.eps:.4g}")
    print(result.clean_table() + "\n")
    print(result.markdown())
    files = ", ".join(result.files[k] for k in ("json", "markdown", "heatmap", "topk_curves"))
    saved = f"; adversarial examples: {args.save_adv}" if args.save_adv else ""
    print(f"report: {files}{saved}", flush=True)
    return 0
