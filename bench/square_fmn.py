"""Native Square and FMN against their references on the same samples, in one run.

Run: ``python bench/square_fmn.py --part square`` (robustlab's ``square`` vs pyautoattack's Square at equal queries:
robust accuracy and wall time, the two interleaved) and ``python bench/square_fmn.py --part fmn`` (robustlab's
``fmn`` vs adv-lib's FMN at equal steps: median minimal norm and time; adv-lib is an optional extra, ``pip install
adv-lib visdom``, or ``--adv-lib-path`` to folders holding them). Results go to bench/results/square_fmn.json, one
key per part, model, norm, n and budget.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import Module

from robustlab import ThreatModel
from robustlab.attacks.fmn import FMN
from robustlab.attacks.square import Square
from robustlab.data import load_dataset
from robustlab.io import environment
from robustlab.models import load_model
from robustlab.models.counting import count_passes

THREATS = {"linf": 0.1, "l2": 2.0}
OUT = Path(__file__).parent / "results" / "square_fmn.json"


def samples(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("fashion-mnist", "test")
    return data.images[:n].float() / 255, data.labels[:n].clone()


def native_square(model: Module, x: Tensor, y: Tensor, threat: ThreatModel, queries: int) -> int:
    """Samples robustlab's Square leaves unbroken."""
    return int((~Square(n_queries=queries)(model, x, y, threat).success).sum())


def reference_square(model: Module, x: Tensor, y: Tensor, threat: ThreatModel, queries: int) -> int:
    """Samples pyautoattack's Square (AutoAttack standard's p_init, seed 0) leaves unbroken."""
    from pyautoattack.square import SquareAttack

    norm = {"linf": "Linf", "l2": "L2"}[threat.norm]
    attack = SquareAttack(model, norm=norm, n_queries=queries, eps=threat.eps, p_init=0.8, seed=0)
    adv = attack.perturb(x, y)
    with torch.no_grad():  # model.forward: the verdict skips the pass counter's hook, it is no query
        return int((model.forward(adv).argmax(1) == y).sum())


def native_fmn(model: Module, x: Tensor, y: Tensor, threat: ThreatModel, steps: int) -> Tensor:
    """robustlab's FMN minimal norms (inf: never broken)."""
    return FMN(steps=steps)(model, x, y, threat).norms


def reference_fmn(model: Module, x: Tensor, y: Tensor, threat: ThreatModel, steps: int) -> Tensor:
    """adv-lib's FMN minimal norms at the same initial step size (inf: never broken)."""
    from adv_lib.attacks import fmn

    p = {"linf": float("inf"), "l2": 2.0}[threat.norm]
    adv = fmn(model, x, y, norm=p, steps=steps, α_init=FMN()._alpha(threat))
    with torch.no_grad():  # model.forward: the verdict skips the pass counter's hook
        broken = model.forward(adv).argmax(1) != y
    return torch.where(broken, threat.distance(adv, x), torch.full(y.shape, float("inf")))


def compare(part: str, model: Module, x: Tensor, y: Tensor, budget: int, norms: list[str], rounds: int = 1) -> dict:
    """Both attacks per norm on the clean-correct samples, in ``rounds`` rounds whose order alternates (interleaved):
    the answer and model passes (images forward and backward) of the first round (both attacks are deterministic),
    each round's seconds and their median."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    xc, yc = x[correct], y[correct]
    __import__("pyautoattack.square" if part == "square" else "adv_lib.attacks")  # imported before any timing
    methods = {
        "square": [("native", native_square), ("pyautoattack", reference_square)],
        "fmn": [("native", native_fmn), ("adv-lib", reference_fmn)],
    }[part]
    rows: dict = {"clean_accuracy": float(correct.float().mean()), "budget": budget}
    for k, norm in enumerate(norms):
        threat = ThreatModel(norm, THREATS[norm])
        row: dict = {"eps": threat.eps}
        for r in range(rounds):
            for name, fn in methods if (k + r) % 2 == 0 else methods[::-1]:
                with count_passes(model) as passes:
                    start = time.perf_counter()
                    out = fn(model, xc, yc, threat, budget)
                    seconds = round(time.perf_counter() - start, 2)
                if name not in row:
                    row[name] = (
                        {"robust_accuracy": out / len(y)}
                        if part == "square"
                        else {"median_norm": float(out.median()), "broken": float(out.isfinite().float().mean())}
                    )
                    row[name].update(passes.to_dict())
                row[name].setdefault("seconds_per_round", []).append(seconds)
        for name, _ in methods:
            row[name]["seconds"] = round(statistics.median(row[name]["seconds_per_round"]), 2)
        if part == "fmn":
            row["median_ratio"] = round(row["native"]["median_norm"] / row["adv-lib"]["median_norm"], 4)
        rows[norm] = row
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("square", "fmn"), required=True)
    parser.add_argument("--model", default="zoo:fmnist-cnn-pgdat")
    parser.add_argument("--n", type=int, default=1000, help="first N test images")
    parser.add_argument("--queries", type=int, default=1000, help="Square's query budget")
    parser.add_argument("--steps", type=int, default=100, help="FMN's steps")
    parser.add_argument("--norms", default="linf,l2")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds per attack, the order alternating")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--adv-lib-path", default=None, help="folders (os.pathsep-separated) to import adv_lib from")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.adv_lib_path:
        sys.path[:0] = args.adv_lib_path.split(os.pathsep)
    model = load_model(args.model).eval()
    x, y = samples(args.n)
    norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    budget = args.queries if args.part == "square" else args.steps
    result = compare(args.part, model, x, y, budget, norms, args.rounds)
    out = Path(args.out)
    saved = json.loads(out.read_text()) if out.exists() else {}
    command = "python bench/square_fmn.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for norm in norms:  # one entry per part, model, norm, n and budget
        saved[f"{args.part}:{args.model}:{norm}:n={args.n}:budget={budget}"] = {
            "command": command,
            "n": args.n,
            "clean_accuracy": result["clean_accuracy"],
            "budget": budget,
            **result[norm],
            "environment": environment(),
        }
    out.write_text(json.dumps(saved, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
