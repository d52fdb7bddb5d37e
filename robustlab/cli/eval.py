"""``robustlab eval``: robust accuracy under a list of attacks and eps values, with top-k metrics, sanity
checks, reports and plots; resumable (``--resume``) and shardable (``torchrun --nproc_per_node=N``)."""

from __future__ import annotations

import argparse
import sys

from robustlab.attacks import attack_help
from robustlab.cli.common import (
    add_data_args,
    add_model_args,
    add_run_args,
    bounds_value,
    data_source,
    eps_value,
    model_source,
    positive_float,
    positive_int,
    resolve_device,
    topk_list,
)
from robustlab.eval import EvalConfig, EvalReport, run_evaluation
from robustlab.eval.intervals import format_interval
from robustlab.io import markdown_table
from robustlab.losses import loss_names

EXAMPLE = (
    "robustlab eval --model zoo:fmnist-cnn --dataset fashion-mnist --n 1000 --eps 0.02,0.05,0.1 "
    "--attacks pgd,autoattack --out runs/eval"
)


def eps_list(text: str) -> list[float]:
    values = [eps_value(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one eps, e.g. --eps 0.1 or --eps 0.02,0.05,0.1")
    return values


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="robust accuracy under several attacks and eps values (worst case, AutoAttack, top-k, reports)",
        description="Start from clean accuracy, run each attack only on the samples still robust, and report the "
        "worst-case (top-1) robust accuracy per eps with top-k statistics, gradient-masking sanity checks, "
        "report.json, report.md and plots. Resumable with --resume; shard with torchrun --nproc_per_node=N -m "
        f"robustlab -- eval ... Example: {EXAMPLE}",
    )
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--norm", default="linf", help="linf or l2 (default: linf)")
    p.add_argument("--eps", required=True, type=eps_list, help="one or more radii, e.g. 8/255 or 0.02,0.05,0.1")
    p.add_argument("--bounds", default="0,1", type=bounds_value, metavar="LO,HI", help="input range (default: 0,1)")
    p.add_argument(
        "--attacks", default="pgd,autoattack", help=f"run in order: {attack_help()} (default: pgd,autoattack)"
    )
    p.add_argument("--steps", type=positive_int, help="steps of the gradient attacks (default: 10)")
    p.add_argument("--step-size", type=positive_float, help="step size of the gradient attacks (default: per attack)")
    p.add_argument("--restarts", type=positive_int, help="restarts of pgd (default: 1)")
    p.add_argument("--loss", help=f"loss of the gradient attacks: {', '.join(loss_names())} (default: ce)")
    p.add_argument("--topk", type=topk_list, help="k's of the top-k metrics (default: 1,2,3,5; 1,5,10 for >10 classes)")
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
    p.add_argument("--predictions", type=positive_int, default=1, help="forward passes per prediction of a "
                   "randomised model (default 1; raised by the adaptive step for a random forward pass)")  # fmt: skip
    p.add_argument("--vote", default="mean", choices=("mean", "majority"), help="how repeated passes decide")
    p.add_argument("--surrogate", help="model spec (SPEC@FILE: with the weights in FILE) the adaptive step crafts "
                   "transfer attacks on, for zero gradients (default: none)")
    p.add_argument("--resume", action="store_true", help="reuse the finished batches saved in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_run_args(p, out_default="runs/eval")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = EvalConfig(
        eps=tuple(args.eps), attacks=args.attacks, norm=args.norm, bounds=args.bounds,
        topk=tuple(args.topk) if args.topk else None, only_robust=not args.all_samples, batch_size=args.batch_size,
        seed=args.seed, sanity_n=args.sanity_n, steps=args.steps, step_size=args.step_size, loss=args.loss,
        restarts=args.restarts, plots=not args.no_plots, eps_protocol=args.eps_protocol, adaptive=args.adaptive,
        bpda=args.bpda, predictions=args.predictions, vote=args.vote, surrogate=args.surrogate,
        extra={k: v for k, v in vars(args).items() if k != "run"},
    )  # fmt: skip
    report = run_evaluation(
        model_source(args),
        data_source(args, args.model),
        config, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
        device=resolve_device(args.device), command_line=args.command_line,
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
    plots = f", plots in {report.files['robust_vs_eps'].rsplit('/', 1)[0]}" if "robust_vs_eps" in report.files else ""
    print(f"report: {report.files['json']}, {report.files['markdown']}{plots}")
    sys.stdout.flush()
