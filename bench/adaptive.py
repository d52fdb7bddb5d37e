"""Adaptive evaluation against two gradient-masking defences: the headline must not overstate robustness.

Run: ``python bench/adaptive.py`` (writes bench/results/adaptive.json). For each defence in front of zoo:fmnist-cnn,
input rounding ``round(4x)/4`` (zero gradients) and Gaussian input noise (a random forward pass), at Linf ``--eps``:
robust accuracy and the time it costs from (1) plain PGD (``--adaptive off``), (2) AutoAttack (``--autoattack``;
the default is a reduced version for the CPU: APGD-CE, APGD-T and Square with fewer iterations and queries; pass
``standard`` for the full one), (3) the default adaptive evaluation (PGD plus what the sanity flags call for).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from robustlab.data import load_dataset
from robustlab.eval import EvalConfig, run_evaluation
from robustlab.io import environment, write_json
from robustlab.models import load_model
from robustlab.models.preprocess import GaussianNoise, Quantize, defended

REDUCED_AUTOATTACK = "autoattack:apgd-ce,apgd-t,square(n_iter=20,n_restarts=1,n_target_classes=3,n_queries=1000)"


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, attacks: str, **kwargs) -> dict:
    """One evaluation through the library; robust accuracy with its interval, what was added, seconds."""
    start = time.perf_counter()
    report = run_evaluation(model, (x, y), EvalConfig(eps=(eps,), attacks=attacks, plots=False, **kwargs))
    entry = report.results[0]
    return {
        "attacks": report.attack_names,
        "clean_accuracy": entry.clean_accuracy,
        "robust_accuracy": entry.robust_accuracy,
        "robust_accuracy_ci": entry.intervals["robust_accuracy"],
        "per_attack": {a: s.robust_accuracy_after for a, s in entry.attacks.items()},
        "flags_fired": report.adaptive.get("fired", []),
        "added": report.adaptive.get("added", {}),
        "judgement": report.judgement,
        "headline": report.headline_note,
        "seconds": round(time.perf_counter() - start, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--eps", type=float, default=0.1, help="Linf eps against the rounding defence")
    parser.add_argument("--noise-eps", type=float, default=0.05, help="Linf eps against the noise defence")
    parser.add_argument("--sigma", type=float, default=0.15, help="std of the noise defence")
    parser.add_argument("--sanity-n", type=int, default=100)
    parser.add_argument("--autoattack", default="reduced", help="reduced (default, CPU) or standard")
    parser.add_argument("--defences", default="rounding,noise")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "adaptive.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist", "test")
    x, y = data.images[: args.n].float() / 255, data.labels[: args.n].clone()
    autoattack = REDUCED_AUTOATTACK if args.autoattack == "reduced" else "autoattack"
    defences = {"rounding": (Quantize(4), args.eps), "noise": (GaussianNoise(args.sigma), args.noise_eps)}
    results = {}
    for name in args.defences.split(","):
        preprocess, eps = defences[name]
        model = defended(load_model("zoo:fmnist-cnn"), preprocess)
        with torch.random.fork_rng():  # the noise defence draws from the global RNG: same draws in every run
            torch.manual_seed(0)
            results[name] = {
                "plain_pgd": evaluate(model, x, y, eps, "pgd", adaptive="off", sanity_n=0),
                "autoattack": evaluate(model, x, y, eps, autoattack, adaptive="off", sanity_n=0),
                "adaptive": evaluate(model, x, y, eps, "pgd", sanity_n=args.sanity_n),
            }
        row = {k: (round(100 * v["robust_accuracy"], 1), v["seconds"]) for k, v in results[name].items()}
        print(name, row, flush=True)
    report = {
        "benchmark": "adaptive",
        "command": "python " + " ".join(sys.argv),
        "model": "zoo:fmnist-cnn behind each defence",
        "n": args.n,
        "eps": {"rounding": args.eps, "noise": args.noise_eps},
        "sigma": args.sigma,
        "autoattack": autoattack,
        "results": results,
        "environment": environment(" ".join(["python", *sys.argv])),
    }
    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
