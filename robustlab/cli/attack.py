"""``robustlab attack``: run one attack on a model over a dataset and report robust accuracy."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from robustlab.attacks import Targeted, make_attack
from robustlab.cli.common import (
    add_data_args,
    add_model_args,
    add_run_args,
    add_threat_args,
    positive_float,
    positive_int,
    resolve_device,
)
from robustlab.cli.transfer import parse_topk
from robustlab.data import first_n, load_dataset
from robustlab.errors import RobustlabError
from robustlab.eval import Evaluator
from robustlab.eval.metrics import default_topk, topk_metrics
from robustlab.io import atomic_torch_save, environment, markdown_table, write_json
from robustlab.losses import loss_names
from robustlab.models import load_model
from robustlab.threat import ThreatModel

EXAMPLE = "robustlab attack --model zoo:fmnist-cnn --dataset fashion-mnist --n 1000 --attack pgd --eps 0.1"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "attack",
        help="attack a model with FGSM, I-FGSM, PGD or MI-FGSM and report robust accuracy",
        description="Attack every sample of a dataset split and report clean accuracy, robust accuracy and "
        f"attack success rate (table on stdout, OUT/report.json). Example: {EXAMPLE}",
    )
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--attack", required=True, help="fgsm, ifgsm, pgd or mifgsm")
    p.add_argument("--loss", default="ce", help=f"attack loss: {', '.join(loss_names())} (default: ce)")
    add_threat_args(p)
    p.add_argument("--steps", type=positive_int, help="gradient steps (default: 10; fgsm: 1)")
    p.add_argument(
        "--step-size",
        type=positive_float,
        help="step size (default: pgd 2.5*eps/steps, ifgsm/mifgsm eps/steps, fgsm eps)",
    )
    p.add_argument("--restarts", type=positive_int, help="random restarts of pgd (default: 1)")
    p.add_argument("--target", help="targeted attack towards a class index, 'random' or 'least-likely'")
    p.add_argument(
        "--topk", help="k's for top-k ASR and robust accuracy (default: 1,2,3,5 for 10 classes, else 1,5,10)"
    )
    p.add_argument("--save-adv", metavar="FILE", help="save {'x_adv', 'y', 'index'} as a torch file")
    add_run_args(p, out_default="runs/attack")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.time()
    device = resolve_device(args.device)
    threat = ThreatModel(args.norm, args.eps, args.bounds)
    ks = parse_topk(args.topk)
    attack = make_attack(
        args.attack, steps=args.steps, step_size=args.step_size, loss=args.loss, restarts=args.restarts, seed=args.seed
    )
    runner = Targeted(attack, args.target, seed=args.seed) if args.target else attack
    dataset = first_n(load_dataset(args.dataset, args.split, args.data_root, args.download), args.n)
    model = load_model(args.model, args.checkpoint, args.trust_checkpoint, device=device)
    evaluator = Evaluator(
        {runner.name: runner},
        threat,
        batch_size=args.batch_size,
        only_robust=False,
        keep_adv=bool(args.save_adv),
        progress=not args.no_progress,
        device=device,
    )
    result = evaluator.run(model, dataset)
    summary = result.summary()
    ks = ks or default_topk(result.clean_logits.shape[1])
    if max(ks) >= result.clean_logits.shape[1]:
        raise RobustlabError(
            f"--topk {args.topk}: k must be below the number of classes ({result.clean_logits.shape[1]})"
        )
    topk = topk_metrics(result.adv_logits[runner.name], result.labels, result.clean_logits, ks)
    report = {
        "clean_accuracy": summary["clean_accuracy"],
        "robust_accuracy": summary["robust_accuracy"],
        "attack_success_rate": summary["attack_success_rate"],
        "n": summary["n"],
        "topk": topk,
        "attack": runner.config(),
        "threat": threat.to_dict(),
        "config": {k: v for k, v in vars(args).items() if k != "run"},
        "seconds": summary["attacks"][runner.name]["seconds"],
        "wall_time_s": round(time.time() - started, 3),
        "environment": environment(args.command_line),
    }
    out = Path(args.out)
    write_json(out / "report.json", report)
    if args.save_adv:
        atomic_torch_save({"x_adv": result.x_adv, "y": result.labels, "index": torch.arange(result.n)}, args.save_adv)
    rows = [
        ["clean accuracy", f"{100 * report['clean_accuracy']:.2f} %"],
        ["robust accuracy", f"{100 * report['robust_accuracy']:.2f} %"],
        ["attack success rate", f"{100 * report['attack_success_rate']:.2f} %"],
        *[[f"top-{k} ASR", f"{100 * asr:.2f} %"] for k, asr in topk["asr"].items()],
        ["interest class rank (mean / median)", f"{topk['icr']['mean']:.2f} / {topk['icr']['median']:.0f}"],
        ["samples", report["n"]],
        ["attack time", f"{report['seconds']:.2f} s"],
    ]
    setting = f"{runner.name} ({args.loss}), {threat.norm} eps={threat.eps:.4g}"
    print(f"{args.model} on {args.dataset}/{args.split}: {setting}")
    print(markdown_table(["metric", "value"], rows))
    print(f"report: {out / 'report.json'}" + (f"; adversarial examples: {args.save_adv}" if args.save_adv else ""))
    sys.stdout.flush()
    return 0
