"""``robustlab eval``: robust accuracy under a list of attacks and eps values, with top-k metrics, sanity
checks, reports and plots; resumable (``--resume``) and shardable (``torchrun --nproc_per_node=N``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from robustlab.attacks import attack_from_spec, split_specs
from robustlab.cli.common import (
    add_data_args,
    add_model_args,
    add_run_args,
    bounds_value,
    eps_value,
    positive_float,
    positive_int,
    resolve_device,
)
from robustlab.data import first_n, load_dataset
from robustlab.distributed import Shard, barrier, finish, init_distributed, shard_device
from robustlab.eval import Evaluator, merge_batches
from robustlab.eval.evaluator import gather_batches
from robustlab.eval.report import eps_entry, write_report
from robustlab.eval.sanity import eps_curve_flag, run_sanity_checks
from robustlab.io import atomic_torch_save, environment, markdown_table, write_json
from robustlab.losses import loss_names
from robustlab.models import load_model
from robustlab.runs import RunFolder, file_digest, text_digest
from robustlab.threat import ThreatModel

EXAMPLE = (
    "robustlab eval --model zoo:fmnist-cnn --dataset fashion-mnist --n 1000 --eps 0.02,0.05,0.1 "
    "--attacks pgd,autoattack --out runs/eval"
)
# Arguments that change the per-sample results; a resumed run must match them.
FINGERPRINT_KEYS = (
    "model", "checkpoint", "dataset", "split", "n", "norm", "bounds", "attacks", "steps", "step_size", "loss",
    "restarts", "seed", "batch_size", "all_samples",
)  # fmt: skip


def eps_list(text: str) -> list[float]:
    values = [eps_value(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one eps, e.g. --eps 0.1 or --eps 0.02,0.05,0.1")
    return values


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"give k >= 1, e.g. 1,2,3,5; got {text!r}")
    return values


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="robust accuracy under several attacks and eps values (worst case, AutoAttack, top-k, reports)",
        description="Start from clean accuracy, run each attack only on the samples still robust, and report the "
        "worst-case robust accuracy per eps with top-k statistics, gradient-masking sanity checks, report.json, "
        f"report.md and plots. Resumable with --resume; shard with torchrun --nproc_per_node=N -m robustlab -- eval "
        f"... Example: {EXAMPLE}",
    )
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--norm", default="linf", help="linf or l2 (default: linf)")
    p.add_argument("--eps", required=True, type=eps_list, help="one or more radii, e.g. 8/255 or 0.02,0.05,0.1")
    p.add_argument("--bounds", default="0,1", type=bounds_value, metavar="LO,HI", help="input range (default: 0,1)")
    p.add_argument(
        "--attacks",
        default="pgd,autoattack",
        help="comma-separated, run in order: fgsm, ifgsm, pgd, mifgsm, NAME+LOSS (pgd+cw), autoattack[:plus|rand|"
        "apgd-ce,apgd-t], torchattacks:NAME; options in parentheses, e.g. pgd(steps=50) (default: pgd,autoattack)",
    )
    p.add_argument("--steps", type=positive_int, help="steps of the gradient attacks (default: 10)")
    p.add_argument("--step-size", type=positive_float, help="step size of the gradient attacks (default: per attack)")
    p.add_argument("--restarts", type=positive_int, help="restarts of pgd (default: 1)")
    p.add_argument("--loss", help=f"loss of the gradient attacks: {', '.join(loss_names())} (default: ce)")
    p.add_argument("--topk", type=int_list, help="k's of the top-k metrics (default: 1,2,3,5; 1,5,10 for >10 classes)")
    p.add_argument(
        "--all-samples",
        action="store_true",
        help="run every attack on every sample (each attack's own robust accuracy and top-k statistics over all "
        "samples) instead of only on the still-robust ones; the worst case is the same, the cost higher",
    )
    p.add_argument(
        "--sanity-n", type=int, default=100, help="samples for the gradient-masking checks (0 skips; default 100)"
    )
    p.add_argument("--resume", action="store_true", help="reuse the finished batches saved in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_run_args(p, out_default="runs/eval")
    p.set_defaults(run=run)


def _fingerprint(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the cached per-eps batches in ``--out`` depend on, with the content of model files (a file
    changed under the same name is another model)."""
    keys = {k: getattr(args, k) for k in FINGERPRINT_KEYS}
    for name in ("model", "checkpoint"):
        if keys[name] and Path(keys[name]).is_file():
            keys[f"{name}_sha256"] = file_digest(keys[name])
    return keys


def _first_samples(dataset: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = next(iter(DataLoader(dataset, batch_size=min(n, len(dataset)), shuffle=False)))
    return x, y


def run(args: argparse.Namespace) -> int:
    started = time.time()
    shard = init_distributed(resolve_device(args.device))
    try:
        folder = RunFolder(
            args.out, "eval", _fingerprint(args), resume=args.resume, overwrite=args.overwrite,
            is_main=shard.is_main, barrier=lambda: barrier(shard),
        )  # fmt: skip
        with folder:
            return _run(args, shard, started)
    finally:
        finish(shard)


def _run(args: argparse.Namespace, shard: Shard, started: float) -> int:
    device = shard_device(resolve_device(args.device), shard)
    threat = ThreatModel(args.norm, args.eps[0], args.bounds)
    defaults = {"steps": args.steps, "step_size": args.step_size, "loss": args.loss, "restarts": args.restarts}
    attacks = {spec: attack_from_spec(spec, seed=args.seed, **defaults) for spec in split_specs(args.attacks)}
    dataset = first_n(load_dataset(args.dataset, args.split, args.data_root, args.download), args.n)
    model = load_model(args.model, args.checkpoint, args.trust_checkpoint, device=device)
    partial = Path(args.out) / "partial"
    say = print if shard.is_main else (lambda *a, **k: None)
    say(f"{args.model} on {args.dataset}/{args.split} (n={len(dataset)}), {threat.norm}, attacks: {', '.join(attacks)}")

    entries, states = [], []
    for eps in args.eps:
        evaluator = Evaluator(
            attacks,
            threat.with_eps(eps),
            batch_size=args.batch_size,
            only_robust=not args.all_samples,
            progress=shard.is_main and not args.no_progress,
            device=device,
        )
        folder = partial / f"eps-{eps:.6g}"
        batches = evaluator.run_batches(model, dataset, checkpoint_dir=folder, shard=shard.as_tuple())
        gathered = gather_batches(batches, shard)
        if gathered is None:
            continue
        result = merge_batches(gathered, list(attacks))
        entries.append(eps_entry(eps, result, args.topk))
        states.append(result.to_state())
        say(f"eps {eps:.4g}: clean {100 * result.clean_accuracy:.2f} %, robust {100 * result.robust_accuracy:.2f} %")
    if not shard.is_main:
        barrier(shard)
        return 0

    flags = None
    if args.sanity_n > 0:
        depends = [args.eps[0], args.sanity_n, args.steps, args.seed]  # and the fingerprint's model/data/threat
        sanity_path = partial / f"sanity-{text_digest(json.dumps(depends))[:16]}.json"
        if sanity_path.exists():
            flags = json.loads(sanity_path.read_text())
        else:
            say(f"sanity checks on {min(args.sanity_n, len(dataset))} samples ...")
            x, y = _first_samples(dataset, args.sanity_n)
            x, y = x.to(device), y.to(device)
            checks = run_sanity_checks(model, x, y, threat, steps=args.steps or 10, seed=args.seed)
            flags = [f.to_dict() for f in checks]
            write_json(sanity_path, flags)
        if len(entries) > 1:
            curve = eps_curve_flag([e["eps"] for e in entries], [e["robust_accuracy"] for e in entries])
            flags = [*flags, {**curve.to_dict(), "name": "rises_with_eps_in_evaluation"}]

    out = Path(args.out)
    atomic_torch_save({"eps": list(args.eps), "attacks": list(attacks), "results": states}, out / "results.pt")
    report = {
        "model": args.model,
        "dataset": args.dataset,
        "split": args.split,
        "n": len(dataset),
        "threat": {"norm": threat.norm, "bounds": list(threat.bounds)},
        "eps": list(args.eps),
        "only_robust": not args.all_samples,
        "attacks": {name: attack.config() for name, attack in attacks.items()},
        "seeds": {"seed": args.seed, "attacks": {n: a.config().get("seed") for n, a in attacks.items()}},
        "results": entries,
        "sanity": flags,
        "sanity_fired": [f["name"] for f in flags or [] if f["fired"]],
        "world_size": shard.world,
        "config": {k: v for k, v in vars(args).items() if k != "run"},
        "wall_time_s": round(time.time() - started, 3),
        "environment": environment(args.command_line),
        "files": {"results": str(out / "results.pt")},
    }
    files = write_report(report, out, plots=not args.no_plots)
    names = list(attacks)
    rows = [
        [f"{e['eps']:.4g}", f"{100 * e['clean_accuracy']:.2f}"]
        + [f"{100 * e['attacks'][a]['robust_accuracy_after']:.2f}" for a in names]
        + [f"{100 * e['robust_accuracy']:.2f}", f"{e['worst_case_topk']['icr']['mean']:.2f}"]
        for e in entries
    ]
    print(markdown_table(["eps", "clean %", *[f"after {a} %" for a in names], "robust %", "ICR mean"], rows))
    for flag in flags or []:
        print(f"{'FLAG' if flag['fired'] else 'ok  '} {flag['name']}: {flag['message']}")
    print(f"report: {files['json']}, {files['markdown']}" + (f", plots in {out}" if not args.no_plots else ""))
    sys.stdout.flush()
    barrier(shard)
    return 0
