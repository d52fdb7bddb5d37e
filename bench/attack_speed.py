"""PGD-10 speed: robustlab vs torchattacks vs the floor of 10 x (forward + input-gradient backward).

Run: ``python bench/attack_speed.py`` (writes bench/results/attack_speed.json). Methods are timed in
interleaved rounds on the same model and batch, and the median per method is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchattacks

from robustlab import ThreatModel
from robustlab.attacks import PGD, frozen_parameters
from robustlab.data import load_dataset
from robustlab.io import environment
from robustlab.models import build_model, load_model

STEPS = 10


def floor_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, final_forward: bool) -> torch.Tensor:
    """The unavoidable work: STEPS x (forward + backward to the input), optionally + 1 forward for the result."""
    with frozen_parameters(model):
        for _ in range(STEPS):
            xa = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
        if final_forward:
            with torch.no_grad():
                model(x)
    return grad


def result_forward(model: torch.nn.Module, x_adv: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_model(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, repeats: int) -> dict:
    device = x.device
    threat = ThreatModel("linf", eps)
    step = eps / 4
    ours = PGD(steps=STEPS, step_size=step)
    ours_early = PGD(steps=STEPS, step_size=step, early_stop=True)
    ours_x_only = PGD(steps=STEPS, step_size=step, evaluate=False)  # x_adv only, like torchattacks
    theirs = torchattacks.PGD(model, eps=eps, alpha=step, steps=STEPS, random_start=True)
    methods = {
        "floor": lambda: floor_pass(model, x, y, final_forward=False),
        "floor_plus_result_forward": lambda: floor_pass(model, x, y, final_forward=True),
        "robustlab_pgd": lambda: ours(model, x, y, threat),
        "robustlab_pgd_early_stop": lambda: ours_early(model, x, y, threat),
        "robustlab_pgd_x_adv_only": lambda: ours_x_only(model, x, y, threat),
        "torchattacks_pgd": lambda: theirs(x, y),
        # like for like: a user of torchattacks needs one more forward to know which samples were broken
        "torchattacks_pgd_plus_result_forward": lambda: result_forward(model, theirs(x, y)),
    }
    for fn in methods.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(repeats):
        for key, fn in methods.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[key].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    adversarial = {
        "clean": x,
        "robustlab_pgd": ours(model, x, y, threat).x_adv,
        "robustlab_pgd_early_stop": ours_early(model, x, y, threat).x_adv,
        "torchattacks_pgd": theirs(x, y),
    }
    with torch.no_grad():
        acc = {k: (model(v).argmax(1) == y).float().mean().item() for k, v in adversarial.items()}
    floor = median["floor"]
    return {
        "model": name,
        "batch_size": len(y),
        "eps": eps,
        "step_size": step,
        "steps": STEPS,
        "repeats": repeats,
        "median_seconds": median,
        "ratio_to_floor": {k: v / floor for k, v in median.items()},
        # like for like: both return x_adv only / both also report which samples were broken
        "speedup_vs_torchattacks_x_adv_only": median["torchattacks_pgd"] / median["robustlab_pgd_x_adv_only"],
        "speedup_vs_torchattacks_with_result": median["torchattacks_pgd_plus_result_forward"] / median["robustlab_pgd"],
        "accuracy": acc,
    }


def readme_table(rows: list[dict]) -> str:
    """The README's table: seconds and ratios to the floor, per model."""
    lines = [
        "| model (batch) | floor s | robustlab PGD-10 | robustlab, x_adv only | torchattacks PGD | "
        "torchattacks + result forward | robustlab early stop |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q = r["ratio_to_floor"]
        lines.append(
            f"| {r['model']} ({r['batch_size']}) | {r['median_seconds']['floor']:.3f} | {q['robustlab_pgd']:.3f} | "
            f"{q['robustlab_pgd_x_adv_only']:.3f} | {q['torchattacks_pgd']:.3f} | "
            f"{q['torchattacks_pgd_plus_result_forward']:.3f} | {q['robustlab_pgd_early_stop']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "attack_speed.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    test = load_dataset("fashion-mnist", "test")
    x = (test.images[: args.batch_size].float() / 255).to(device)
    y = test.labels[: args.batch_size].to(device)
    rows = [
        bench_model("zoo:fmnist-cnn", load_model("zoo:fmnist-cnn", device=device), x, y, 0.03, args.repeats),
        bench_model("zoo:fmnist-mlp", load_model("zoo:fmnist-mlp", device=device), x, y, 0.03, args.repeats),
    ]
    # a CIFAR-sized PreActResNet-18 (random weights: speed only) on random 32x32 images
    resnet = build_model("preact-resnet18", "cifar10").to(device).eval()
    g = torch.Generator().manual_seed(0)
    xc = torch.rand(args.batch_size if device.type == "cuda" else 32, 3, 32, 32, generator=g).to(device)
    yc = torch.randint(0, 10, (len(xc),), generator=g).to(device)
    rows.append(bench_model("preact-resnet18 (cifar shape)", resnet, xc, yc, 8 / 255, max(3, args.repeats // 3)))
    result = {"benchmark": "attack_speed", "results": rows, "environment": environment(" ".join(["python", *sys.argv]))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        ratios = ", ".join(f"{k} {v:.3f}" for k, v in r["ratio_to_floor"].items())
        print(
            f"{r['model']} (batch {r['batch_size']}): x floor: {ratios}; speed-up vs torchattacks "
            f"{r['speedup_vs_torchattacks_x_adv_only']:.3f} (x_adv only), "
            f"{r['speedup_vs_torchattacks_with_result']:.3f} (with success flags)"
        )
    print(readme_table(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
