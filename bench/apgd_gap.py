"""Native APGD-CE / APGD-DLR against pyautoattack's APGD on the same samples, at the same iterations and restarts.

Run: ``python bench/apgd_gap.py --models zoo:fmnist-cnn-pgdat`` (one model per run keeps a run short on a CPU).
On the first ``--n`` Fashion-MNIST test images, Linf 0.1 and L2 2.0, losses ce and dlr: robust accuracy of each,
the samples where they disagree, and wall time, the two interleaved (native first, then the reference, per case).
Both attack the clean-correct samples only (as pyautoattack's ``perturb`` does); the native one with early stopping
(the evaluator's default; it changes only the cost) and one thread each. Results are merged into
bench/results/apgd_gap.json (after each row), one key per model, threat and loss.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from robustlab import ThreatModel
from robustlab.attacks.apgd import APGD
from robustlab.data import load_dataset
from robustlab.io import environment, write_json
from robustlab.models import load_model

THREATS = {"linf": 0.1, "l2": 2.0}
OUT = Path(__file__).parent / "results" / "apgd_gap.json"


def compare(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, loss: str, steps: int,
            restarts: int, seed: int) -> dict:  # fmt: skip
    """Robust accuracy (of all ``x``), disagreements and seconds of native APGD and pyautoattack's APGD."""
    from pyautoattack.autopgd_base import APGDAttack

    with torch.no_grad():
        correct = model(x).argmax(1) == y
    xc, yc = x[correct], y[correct]
    begin = time.perf_counter()
    ours = APGD(steps=steps, loss=loss, restarts=restarts, seed=seed, early_stop=True)(model, xc, yc, threat)
    native_s = time.perf_counter() - begin
    norm = {"linf": "Linf", "l2": "L2"}[threat.norm]
    reference = APGDAttack(model, n_iter=steps, norm=norm, eps=threat.eps, loss=loss, n_restarts=restarts, seed=seed,
                           device=x.device)  # fmt: skip
    begin = time.perf_counter()
    with torch.random.fork_rng():
        x_adv = reference.perturb(xc, yc)
    reference_s = time.perf_counter() - begin
    with torch.no_grad():
        theirs = model(x_adv).argmax(1) == yc
    assert float(threat.distance(ours.x_adv, xc).max()) <= threat.eps + 1e-5
    mine = ~ours.success
    return {
        "native_robust": mine.sum().item() / len(x),
        "pyautoattack_robust": theirs.sum().item() / len(x),
        "gap_points": 100 * (mine.sum().item() - theirs.sum().item()) / len(x),
        "robust_only_native": int((mine & ~theirs).sum()),
        "robust_only_pyautoattack": int((~mine & theirs).sum()),
        "native_s": round(native_s, 2),
        "pyautoattack_s": round(reference_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Compare on each model, threat and loss; print one line each and merge them into the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="zoo:fmnist-cnn-pgdat")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--norms", default="linf,l2")
    parser.add_argument("--losses", default="ce,dlr")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist", "test")
    x, y = data.images[: args.n].float() / 255, data.labels[: args.n].clone()
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    for spec in args.models.split(","):
        model = load_model(spec).eval()
        for norm in args.norms.split(","):
            for loss in args.losses.split(","):
                row = compare(model, x, y, ThreatModel(norm, THREATS[norm]), loss, args.steps, args.restarts, args.seed)
                key = f"{spec} {norm} {THREATS[norm]} {loss} n={args.n} steps={args.steps} restarts={args.restarts}"
                key += f" seed={args.seed}" if args.seed else ""
                results[key] = row
                results["environment"] = environment()
                write_json(OUT, results)  # after each row: a run stopped early keeps what it measured
                print(key, row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
