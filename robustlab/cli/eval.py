"""``robustlab eval``: robust accuracy under a list of attacks and eps values, with top-k metrics, sanity
checks, reports and plots; resumable (``--resume``) and shardable (``torchrun --nproc_per_node=N``)."""

from __future__ import annotations

import argparse

from robustlab.attacks import attack_help
from robustlab.cli import common as c
from robustlab.eval import EvalConfig, run_evaluation
from robustlab.eval.summary import summary_text

EXAMPLE = (
    "robustlab eval --model zoo:fmnist-cnn --dataset fashion-mnist --n 1000 --eps 0.02,0.05,0.1 "
    "--attacks pgd,autoattack --out runs/eval"
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = c.subparser(
        subparsers, "eval",
        "Start from clean accuracy, run each attack only on the samples still robust, and report the "
        "worst-case (top-1) robust accuracy per eps with top-k statistics, gradient-masking sanity checks, "
        "report.json, report.md and plots. Resumable with --resume; shard with torchrun --nproc_per_node=N -m "
        f"robustlab -- eval ... Example: {EXAMPLE}",
    )  # fmt: skip
    c.add_model_args(p)
    c.add_data_args(p)
    c.add_threat_args(p, many=True)
    d = c.defaults_of(EvalConfig)
    p.add_argument("--attacks", default=d["attacks"], help=f"run in order: {attack_help()} (default: {d['attacks']})")
    c.add_attack_args(p)
    p.add_argument("--topk", type=c.topk_list, help="k's of the top-k metrics (default: 1,2,3,5; 1,5,10 for >10)")
    p.add_argument("--all-samples", action="store_true",
                   help="run every attack on every sample (each attack's own robust accuracy and top-k statistics over "
                   "all samples) instead of only on the still-robust ones; the worst case is the same, the cost higher")
    p.add_argument("--sanity-n", type=c.nonnegative_int, default=d["sanity_n"],
                   help="samples for the gradient-masking checks (0 skips them)")
    p.add_argument("--eps-protocol", default=d["eps_protocol"], choices=("nested", "separate"),
                   help="nested: ascending eps, a sample broken at a smaller eps stays broken and only the others are "
                   "attacked; separate: each eps from scratch")
    p.add_argument("--adaptive", default=d["adaptive"], choices=("on", "off"),
                   help="on: add the attacks that answer the gradient-masking flags that fire (BPDA-PGD, Square, "
                   "EOT-PGD, more steps); off: the plain protocol, the headline marked unreliable")
    p.add_argument("--bpda", default="", metavar="NAME[,NAME]", help="modules run as they are forward and as the "
                   "identity backward, for every attack (BPDA), e.g. --bpda preprocess (default: none)")
    p.add_argument("--predictions", type=c.positive_int, default=d["predictions"], help="forward passes per "
                   "prediction of a randomised model (raised by the adaptive step for a random forward pass)")
    p.add_argument("--vote", default=d["vote"], choices=("mean", "majority"), help="how repeated passes decide")
    p.add_argument("--surrogate", help="model spec (SPEC@FILE: with the weights in FILE) the adaptive step crafts "
                   "transfer attacks on, for zero gradients (default: none)")
    p.add_argument("--curve", action="store_true", help="also the whole robustness curve from one minimum-norm run "
                   "(FMN): robust accuracy at every eps with intervals, checked by a fixed-eps attack at three eps")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    c.add_run_args(p, out_default="runs/eval", resume=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = c.config_from(EvalConfig, args, eps=tuple(args.eps), only_robust=not args.all_samples,
                           plots=not args.no_plots)  # fmt: skip
    report = run_evaluation(c.model_source(args), c.data_source(args, args.model), config, args.out,
                            resume=args.resume, **c.run_options(args))  # fmt: skip
    if report.rank == 0:
        print(summary_text(report), flush=True)
    return 0
