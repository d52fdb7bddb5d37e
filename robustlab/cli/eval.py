"""``robustlab eval``: robust accuracy under a list of attacks and eps values, with top-k metrics, sanity
checks, reports and plots; resumable (``--resume``) and shardable (``torchrun --nproc_per_node=N``)."""

from __future__ import annotations

import argparse
import sys

from robustlab.attacks import attack_help
from robustlab.cli import common as c
from robustlab.eval import EvalConfig, EvalReport, run_evaluation
from robustlab.eval.intervals import format_interval
from robustlab.io import markdown_table

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
    p.add_argument(
        "--attacks", default="default", help=f"run in order: {attack_help()} (default: default: apgd, apgd-t)"
    )
    c.add_attack_args(p)
    p.add_argument("--topk", type=c.topk_list, help="k's of the top-k metrics (default: 1,2,3,5; 1,5,10 for >10)")
    p.add_argument(
        "--all-samples",
        action="store_true",
        help="run every attack on every sample (each attack's own robust accuracy and top-k statistics over all "
        "samples) instead of only on the still-robust ones; the worst case is the same, the cost higher",
    )
    p.add_argument(
        "--sanity-n", type=int, default=100, help="samples for the gradient-masking checks (0 skips; default 100)"
    )
    p.add_argument("--eps-protocol", default="nested", choices=("nested", "separate"),
                   help="nested (default): ascending eps, a sample broken at a smaller eps stays broken and only the "
                   "others are attacked; separate: each eps from scratch")  # fmt: skip
    p.add_argument("--adaptive", default="on", choices=("on", "off"),
                   help="on (default): add the attacks that answer the gradient-masking flags that fire (BPDA-PGD, "
                   "Square, EOT-PGD, more steps); off: the plain protocol, the headline marked unreliable")  # fmt: skip
    p.add_argument("--bpda", default="", metavar="NAME[,NAME]", help="modules run as they are forward and as the "
                   "identity backward, for every attack (BPDA), e.g. --bpda preprocess")  # fmt: skip
    p.add_argument("--predictions", type=c.positive_int, default=1, help="forward passes per prediction of a "
                   "randomised model (default 1; raised by the adaptive step for a random forward pass)")  # fmt: skip
    p.add_argument("--vote", default="mean", choices=("mean", "majority"), help="how repeated passes decide")
    p.add_argument("--surrogate", help="model spec (SPEC@FILE: with the weights in FILE) the adaptive step crafts "
                   "transfer attacks on, for zero gradients (default: none)")
    p.add_argument("--curve", action="store_true", help="also the whole robustness curve from one minimum-norm run "
                   "(FMN): robust accuracy at every eps with intervals, checked by a fixed-eps attack at three eps")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    c.add_batch_args(p)
    c.add_run_args(p, out_default="runs/eval", resume=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = EvalConfig(
        tuple(args.eps), c.threat_of(args), attacks=args.attacks, topk=c.topk_tuple(args),
        only_robust=not args.all_samples, sanity_n=args.sanity_n, plots=not args.no_plots,
        eps_protocol=args.eps_protocol, adaptive=args.adaptive, bpda=args.bpda, predictions=args.predictions,
        vote=args.vote, surrogate=args.surrogate, curve=args.curve, **c.attack_defaults(args),
    )  # fmt: skip
    report = run_evaluation(
        c.model_source(args), c.data_source(args, args.model), config, args.out, resume=args.resume,
        overwrite=args.overwrite, progress=not args.no_progress, device=c.resolve_device(args.device),
        command_line=args.command_line,
    )  # fmt: skip
    if report.rank == 0:
        print_report(report)
    return 0


def print_report(report: EvalReport) -> None:
    """The table of robust accuracy per eps and attack, samples with NaN/inf logits, sanity flags, files."""
    names = report.attack_names
    print(
        f"{report.model} on {report.dataset}/{report.split} (n={report.n}), {report.norm}, attacks: {', '.join(names)}"
    )
    rows = [
        [f"{e.eps:.4g}", format_interval(e.clean_accuracy, e.intervals.get("clean_accuracy"))]
        + [format_interval(e.attacks[a].robust_accuracy_after, e.attacks[a].robust_accuracy_after_ci) for a in names]
        + [
            format_interval(e.robust_accuracy, e.intervals.get("robust_accuracy")),
            f"{e.worst_case_topk.icr['mean']:.2f}",
        ]
        for e in report.results
    ]
    print(markdown_table(["eps", "clean %", *[f"after {a} %" for a in names], "robust %", "ICR mean"], rows))
    # the protocol in one line here; report.md says what it means, once
    print(f"95 % Clopper-Pearson intervals, n = {report.n}; eps protocol: {report.protocol} (see report.md)")
    if report.cost:  # the cost of the answer: images forward / input gradients backward, all ranks
        passes = [[f"{e.eps:.4g}", a, f"{e.attacks[a].seconds:.2f}", e.attacks[a].forward_passes,
                   e.attacks[a].backward_passes] for e in report.results for a in names]  # fmt: skip
        print(markdown_table(["eps", "attack", "seconds", "forward passes", "backward passes"], passes))
        parts = ", ".join(f"{k} {v['forward_passes']}/{v['backward_passes']}" for k, v in report.cost.items()
                          if isinstance(v, dict))  # fmt: skip
        print(f"cost: {report.cost['forward_passes']} forward, {report.cost['backward_passes']} backward passes "
              f"(forward/backward: {parts})")  # fmt: skip
    print(f"headline: {report.headline_text()}")
    for added, why in report.adaptive.get("added", {}).items():
        print(f"added {added}: {why}")
    for e in report.results:
        if e.nonfinite:
            shown = ", ".join(map(str, e.nonfinite[:10])) + (", ..." if len(e.nonfinite) > 10 else "")
            print(f"NaN/inf logits at eps {e.eps:.4g}: {len(e.nonfinite)} sample(s) counted neither correct nor robust "
                  f"(indices {shown})")  # fmt: skip
    for flag in report.sanity or []:
        print(f"{'FLAG' if flag.fired else 'ok  '} {flag.name}: {flag.message}")
    for ind in report.indicators or []:  # indicators of attack failure, beside the flags
        state = {True: "FIRED", False: "ok  ", None: "n/a "}[ind["fired"]]
        print(f"{state} indicator {ind['name']}: {ind['message']}")
    if report.curve:
        median = report.curve["median_norm"]
        print(f"curve: {len(report.curve['eps'])} eps from one {report.curve['attack']['attack']} run, median minimal "
              f"norm {'not reached' if median is None else f'{median:.4g}'}; {report.curve['note']} (report.md)")
    plots = f", plots in {report.files['robust_vs_eps'].rsplit('/', 1)[0]}" if "robust_vs_eps" in report.files else ""
    print(f"report: {report.files['json']}, {report.files['markdown']}{plots}")
    sys.stdout.flush()
