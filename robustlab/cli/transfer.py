"""``robustlab transfer``: craft adversarial examples on surrogates, judge them on targets, by top-k ASR."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from robustlab.attacks.registry import attack_from_spec, split_specs
from robustlab.attacks.transfer import Ensemble
from robustlab.cli.common import (
    add_data_args,
    add_run_args,
    add_threat_args,
    positive_float,
    positive_int,
    resolve_device,
)
from robustlab.data import first_n, load_dataset
from robustlab.errors import RobustlabError
from robustlab.eval.transfer import plot_heatmaps, plot_topk_curves, transfer_matrix
from robustlab.io import atomic_torch_save, atomic_write_bytes, environment, markdown_table, write_json
from robustlab.models import load_model
from robustlab.threat import ThreatModel

EXAMPLE = (
    "robustlab transfer --source zoo:fmnist-cnn --targets zoo:fmnist-cnn-s1,zoo:fmnist-mlp "
    "--dataset fashion-mnist --n 1000 --attacks fgsm,ifgsm,ifgsm+normalized-ce --eps 0.1"
)
DEFAULT_ATTACKS = "fgsm,ifgsm,ifgsm+normalized-ce"
ONE_STEP = ("fgsm",)  # attacks that take neither --steps nor --step-size


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "transfer",
        help="transfer attacks: craft on surrogates, evaluate on targets, top-k ASR matrix",
        description="Craft adversarial examples with each attack on each surrogate (white-box numbers included), "
        "evaluate them on every target, and report a surrogate x target matrix of top-k attack success rates, "
        "interest class rank statistics, OUT/report.json, OUT/report.md, OUT/heatmap.png and "
        f"OUT/topk_curves.png. Example: {EXAMPLE}",
    )
    p.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="SPEC[,SPEC...]",
        help="a surrogate model spec; several specs joined by commas form one ensemble (averaged logits); "
        "repeat --source for more rows of the matrix",
    )
    p.add_argument("--targets", required=True, metavar="SPEC,SPEC,...", help="comma-separated target model specs")
    add_data_args(p)
    p.add_argument(
        "--attacks",
        default=DEFAULT_ATTACKS,
        help="comma-separated attack specs: fgsm, ifgsm, pgd, mifgsm, NAME+LOSS (ifgsm+normalized-ce, pgd+cw), "
        "topk; options in parentheses, e.g. mifgsm(diversity_prob=0.5) for DI-MI-FGSM "
        f"(default: {DEFAULT_ATTACKS})",
    )
    add_threat_args(p)
    p.add_argument("--steps", type=positive_int, help="gradient steps of the iterative attacks (default: 10)")
    p.add_argument("--step-size", type=positive_float, help="step size of the iterative attacks (default: eps/steps)")
    p.add_argument("--topk", help="comma-separated k's for the tables (default: 1,2,3,5 for 10 classes, else 1,5,10)")
    p.add_argument("--save-adv", metavar="FILE", help="save {'x_adv': {attack: {source: tensor}}, 'y', 'index'}")
    add_run_args(p, out_default="runs/transfer")
    p.set_defaults(run=run)


def parse_topk(text: str | None) -> list[int] | None:
    """``"1,2,3,5"`` -> ``[1, 2, 3, 5]``."""
    if text is None:
        return None
    try:
        ks = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RobustlabError(f"--topk {text!r} is not a comma-separated list of whole numbers, e.g. 1,2,3,5") from None
    if not ks or min(ks) < 1:
        raise RobustlabError(f"--topk {text!r}: give whole numbers >= 1, e.g. 1,2,3,5")
    return ks


def build_attack(spec: str, args: argparse.Namespace):
    """An attack from its spec, with --steps/--step-size/--seed as defaults (one-step attacks take only the seed)."""
    head = spec.split("(", 1)[0].split("+", 1)[0].strip().lower()
    defaults = {"seed": args.seed}
    if head not in ONE_STEP:
        defaults.update(steps=args.steps, step_size=args.step_size)
    return attack_from_spec(spec, **defaults)


def run(args: argparse.Namespace) -> int:
    started = time.time()
    device = resolve_device(args.device)
    threat = ThreatModel(args.norm, args.eps, args.bounds)
    ks = parse_topk(args.topk)
    attacks = {spec: build_attack(spec, args) for spec in split_specs(args.attacks)}
    target_specs = [s.strip() for s in args.targets.split(",") if s.strip()]
    if not target_specs:
        raise RobustlabError("--targets is empty; give model specs such as zoo:fmnist-cnn-s1,zoo:fmnist-mlp")
    loaded: dict[str, nn.Module] = {}

    def model(spec: str) -> nn.Module:
        if spec not in loaded:
            loaded[spec] = load_model(spec, device=device)
        return loaded[spec]

    sources: dict[str, nn.Module] = {}
    for text in args.source:
        members = [s.strip() for s in text.split(",") if s.strip()]
        if not members:
            raise RobustlabError("--source is empty; give a model spec such as zoo:fmnist-cnn")
        name = "+".join(members)
        sources[name] = model(members[0]) if len(members) == 1 else Ensemble([model(m) for m in members])
    targets = {spec: model(spec) for spec in target_specs}
    dataset = first_n(load_dataset(args.dataset, args.split, args.data_root, args.download), args.n)
    result = transfer_matrix(
        sources, targets, attacks, threat, dataset, ks, args.batch_size, progress=not args.no_progress, device=device
    )

    out = Path(args.out)
    report = {
        **result.to_dict(),
        "config": {k: v for k, v in vars(args).items() if k != "run"},
        "wall_time_s": round(time.time() - started, 3),
        "environment": environment(args.command_line),
    }
    write_json(out / "report.json", report)
    header = (
        f"# Transfer attacks on {args.dataset}/{args.split} (n = {result.n}), {threat.norm} eps = {threat.eps:.4g}\n\n"
        "Cells: top-k attack success rate (%) for k = " + ", ".join(map(str, result.ks)) + "; rows craft "
        "(surrogates), columns judge (the white-box column is the surrogate itself).\n\n"
    )
    clean = markdown_table(
        ["model", "clean accuracy"], [[m, f"{100 * a:.2f} %"] for m, a in result.clean_accuracy.items()]
    )
    atomic_write_bytes(out / "report.md", (header + clean + "\n\n" + result.markdown()).encode())
    plot_heatmaps(result, out / "heatmap.png")
    plot_topk_curves(result, out / "topk_curves.png")
    if args.save_adv:
        atomic_torch_save({"x_adv": result.x_adv, "y": result.labels, "index": torch.arange(result.n)}, args.save_adv)

    print(f"{args.dataset}/{args.split}, n = {result.n}, {threat.norm} eps = {threat.eps:.4g}")
    print(clean + "\n")
    print(result.markdown())
    files = ", ".join(str(out / f) for f in ("report.json", "report.md", "heatmap.png", "topk_curves.png"))
    print(f"report: {files}" + (f"; adversarial examples: {args.save_adv}" if args.save_adv else ""))
    sys.stdout.flush()
    return 0
