"""Adaptive evaluation against gradient-masking defences: the default headline against the strongest reference.

Run: ``python bench/adaptive.py`` (writes bench/results/adaptive.json after each defence). For each defence in front
of zoo:fmnist-cnn -- input rounding ``round(4x)/4`` as a named module (``rounding``) and inside ``forward``
(``rounding-inline``: no module to name), a 3x3 median filter with a zero gradient (``median``), Gaussian input noise
(``noise``) -- robust accuracy [95 % interval], forward/backward passes and seconds of (1) plain PGD (``--adaptive
off``), (2) the default adaptive evaluation (``--attacks pgd``, sanity checks and adaptive step on), and the issue's
references, each alone on every sample: BPDA-PGD-50 (on the rounding or filter as a named module), EOT-PGD (20 steps,
20 draws; noise), Square with 5000 queries and PGD-50 transferred from the undefended CNN. ``gap`` is the default
headline minus the lowest reference (the target: at most 3 points).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from robustlab.attacks import PGD, TransferAttack
from robustlab.attacks.bpda import BPDAAttack
from robustlab.attacks.square import Square
from robustlab.data import load_dataset
from robustlab.eval import EvalConfig, Evaluator, run_evaluation
from robustlab.eval.intervals import clopper_pearson
from robustlab.io import environment, write_json
from robustlab.models import load_model
from robustlab.models.counting import counted_model
from robustlab.models.preprocess import GaussianNoise, MedianFilter, Quantize, QuantizedInput, defended
from robustlab.threat import ThreatModel


def defence(name: str, sigma: float) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The defended model and the same function with its defence as the named module ``preprocess`` (for BPDA)."""
    cnn = load_model("zoo:fmnist-cnn")
    if name == "rounding":
        model = defended(cnn, Quantize(4))
        return model, model
    if name == "rounding-inline":
        return QuantizedInput(cnn, 4), defended(load_model("zoo:fmnist-cnn"), Quantize(4))
    if name == "median":
        model = defended(cnn, MedianFilter(3))
        return model, model
    return defended(cnn, GaussianNoise(sigma)), None


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, **kwargs) -> dict:
    """One evaluation through the library: robust accuracy with its interval, passes, what was added, seconds."""
    start = time.perf_counter()
    report = run_evaluation(model, (x, y), EvalConfig(eps=(eps,), attacks="pgd", plots=False, **kwargs))
    entry = report.results[0]
    return {
        "robust_accuracy": entry.robust_accuracy, "robust_accuracy_ci": entry.intervals["robust_accuracy"],
        "forward_passes": report.cost.get("forward_passes"), "backward_passes": report.cost.get("backward_passes"),
        "per_attack": {a: {"broken": s.broken, "seconds": round(s.seconds, 2), "forward_passes": s.forward_passes}
                       for a, s in entry.attacks.items()},
        "fired": report.adaptive.get("fired", []), "added": report.adaptive.get("added", {}),
        "unanswered": report.adaptive.get("unanswered", {}), "set_by": report.adaptive.get("headline_set_by"),
        "headline": report.headline_note, "seconds": round(time.perf_counter() - start, 2),
    }  # fmt: skip


def reference(model: torch.nn.Module, attack, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
              predictions: int) -> dict:  # fmt: skip
    """One reference attack alone on every sample, judged over ``predictions`` passes; its passes and seconds."""
    start = time.perf_counter()
    with counted_model(model) as (counted, passes):
        result = Evaluator({"ref": attack}, threat, only_robust=False, predictions=predictions).run(counted, (x, y))
    k = int(result.robust.sum())
    return {"robust_accuracy": k / len(y), "robust_accuracy_ci": list(clopper_pearson(k, len(y))),
            "forward_passes": passes.forward, "backward_passes": passes.backward,
            "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--eps", type=float, default=0.1, help="Linf eps against rounding and the median filter")
    parser.add_argument("--noise-eps", type=float, default=0.05, help="Linf eps against the noise defence")
    parser.add_argument("--sigma", type=float, default=0.15, help="std of the noise defence")
    parser.add_argument("--sanity-n", type=int, default=100)
    parser.add_argument("--defences", default="rounding,rounding-inline,median,noise")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "adaptive.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist", "test")
    x, y = data.images[: args.n].float() / 255, data.labels[: args.n].clone()
    x = x[:, None] if x.dim() == 3 else x
    surrogate = load_model("zoo:fmnist-cnn")
    out = Path(args.out)
    saved = json.loads(out.read_text()) if out.is_file() else {}
    results = saved.get("results", {}) if saved.get("n") == args.n else {}
    for name in args.defences.split(","):
        model, named = defence(name, args.sigma)
        eps = args.noise_eps if name == "noise" else args.eps
        threat, predictions = ThreatModel("linf", eps), 10 if name == "noise" else 1
        refs = {"square-5000": (model, Square(n_queries=5000)),
                "transfer-pgd-50": (model, TransferAttack(PGD(steps=50), surrogate))}  # fmt: skip
        if named is not None:
            refs["bpda-pgd-50"] = (named, BPDAAttack(PGD(steps=50), ["preprocess"]))
        if name == "noise":
            refs["eot-pgd-20x20"] = (model, PGD(steps=20, eot_samples=20))
        with torch.random.fork_rng():  # the noise defence draws from the global RNG: same draws in every run
            torch.manual_seed(0)
            row = {
                "eps": eps,
                "plain_pgd": evaluate(model, x, y, eps, adaptive="off", sanity_n=0, predictions=predictions),
                "default": evaluate(model, x, y, eps, sanity_n=args.sanity_n),
                "references": {k: reference(m, a, x, y, threat, predictions) for k, (m, a) in refs.items()},
            }
        lowest = min(r["robust_accuracy"] for r in row["references"].values())
        row["gap_points"] = round(100 * (row["default"]["robust_accuracy"] - lowest), 2)
        results[name] = row
        shown = {k: round(100 * v["robust_accuracy"], 1) for k, v in row["references"].items()}
        plain, default = (round(100 * row[k]["robust_accuracy"], 1) for k in ("plain_pgd", "default"))
        print(name, "plain", plain, "default", default, shown, "gap", row["gap_points"], flush=True)
        write_json(out, {
            "benchmark": "adaptive", "command": "python " + " ".join(sys.argv), "n": args.n,
            "model": "zoo:fmnist-cnn behind each defence", "sigma": args.sigma, "results": results,
            "environment": environment(" ".join(["python", *sys.argv])),
        })  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
