"""The evaluator's saving from attacking only the still-robust samples: PGD + AutoAttack (standard).

Run: ``python bench/eval_speed.py`` (writes bench/results/eval_speed.json). For each eps and two layouts of
the same attacks, in one run:

- layout ``autoattack``: PGD-20, then AutoAttack as one entry (the package chains its four attacks inside);
- layout ``autoattack-split``: PGD-20, then AutoAttack's four attacks (apgd-ce, apgd-t, fab-t, square, with
  the standard version's settings) as four entries of the evaluator;
- ``evaluator``: ``only_robust=True``, each entry sees only what the entries before it left robust;
- ``separately``: ``only_robust=False``, every entry on every sample, as one would run them one by one.

Both modes give the same worst-case robust accuracy (checked per sample); the saving is the ratio of the
wall times (CPU times on a shared machine are noisy: the sample counts are the exact part).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from robustlab import ThreatModel
from robustlab.attacks import attack_from_spec
from robustlab.data import load_dataset
from robustlab.eval import Evaluator
from robustlab.io import environment, write_json
from robustlab.models import load_model

LAYOUTS = {
    "autoattack": ["pgd(steps=20)", "autoattack"],
    "autoattack-split": [
        "pgd(steps=20)",
        "autoattack:apgd-ce(n_restarts=1)",
        "autoattack:apgd-t",
        "autoattack:fab-t",
        "autoattack:square",
    ],
}


def timed_run(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, specs: list[str], only_robust: bool
) -> dict:
    attacks = {spec: attack_from_spec(spec, seed=0) for spec in specs}
    evaluator = Evaluator(attacks, ThreatModel("linf", eps), batch_size=len(y), only_robust=only_robust)
    start = time.perf_counter()
    result = evaluator.run(model, (x, y))
    seconds = time.perf_counter() - start
    summary = result.summary()
    return {
        "seconds": seconds,
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": result.robust_accuracy,
        "per_attack": {
            name: {"samples_attacked": s["attacked"], "seconds": s["seconds"], "broken": s["broken"]}
            for name, s in summary["attacks"].items()
        },
        "robust": result.robust,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:fmnist-cnn")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--eps", default="0.05", help="comma-separated Linf radii")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 avoids oversubscription)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_model(args.model, device=device)
    data = load_dataset("fashion-mnist", "test")
    x = (data.images[: args.n].float() / 255).to(device)
    y = data.labels[: args.n].to(device)

    results = []
    for eps in (float(e) for e in args.eps.split(",")):
        for layout, specs in LAYOUTS.items():
            chained = timed_run(model, x, y, eps, specs, only_robust=True)
            separate = timed_run(model, x, y, eps, specs, only_robust=False)
            same = bool(torch.equal(chained.pop("robust"), separate.pop("robust")))
            after_pgd = sum(s["seconds"] for name, s in chained["per_attack"].items() if name != specs[0])
            after_pgd_separately = sum(s["seconds"] for name, s in separate["per_attack"].items() if name != specs[0])
            results.append(
                {
                    "eps": eps,
                    "layout": layout,
                    "attacks": specs,
                    "evaluator": chained,
                    "separately": separate,
                    "same_per_sample_worst_case": same,
                    "saving_ratio": separate["seconds"] / chained["seconds"],
                    "autoattack_saving_ratio": after_pgd_separately / after_pgd if after_pgd > 0 else None,
                }
            )
            print(json.dumps(results[-1], indent=1), flush=True)
    options = vars(args).items()
    report = {
        "benchmark": "eval_speed",
        "command": "python bench/eval_speed.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options),
        "model": args.model,
        "n": args.n,
        "autoattack": "pyautoattack standard (apgd-ce, apgd-t, fab-t, square), seed 0",
        "results": results,
        "environment": environment(" ".join(["python", *sys.argv])),
    }
    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
