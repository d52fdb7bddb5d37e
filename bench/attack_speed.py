"""PGD-10 speed: robustlab's default PGD-10 (as the evaluator runs it) against torchattacks' on the same model and
batch, in one run, with the floor of 10 x (forward + input-gradient backward); and bf16 against fp32 robust accuracy.

Run: ``python bench/attack_speed.py`` (writes bench/results/attack_speed.json). Methods are timed in interleaved
rounds on the same model and batch, and the median per method is reported. ``--precision-check N`` also runs
PGD-10 in fp32 and bf16 on N test images for every zoo classifier (robust accuracy must agree within 0.5 points).
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
from robustlab.attacks import PGD, attack_from_spec, frozen_parameters
from robustlab.attacks.runtime import offered_precisions
from robustlab.data import load_dataset
from robustlab.io import environment
from robustlab.models import build_model, load_model

STEPS = 10
ZOO_CLASSIFIERS = {
    "zoo:fmnist-cnn": 0.03,
    "zoo:fmnist-mlp": 0.03,
    "zoo:fmnist-cnn-pgdat": 0.1,
    "zoo:fmnist-cnn-noiseaug": 0.1,
    "zoo:fmnist-deacl-slf": 0.1,
}


def floor_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The unavoidable work of final-iterate PGD-10: STEPS x (forward + backward to the input), nothing else."""
    with frozen_parameters(model):
        for _ in range(STEPS):
            xa = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
    return grad


def result_forward(model: torch.nn.Module, x_adv: torch.Tensor) -> torch.Tensor:
    """What a torchattacks user adds to learn which samples were broken."""
    with torch.no_grad():
        return model(x_adv).argmax(1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def default_pgd(**options: object) -> PGD:
    """robustlab's PGD-10 as the evaluator builds it (early stopping on, fp32), with the opt-in layout probe
    (memory format auto)."""
    return attack_from_spec("pgd", steps=STEPS, early_stop=True, **{"memory_format": "auto", **options})  # type: ignore[return-value]


def bench_model(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, repeats: int) -> dict:
    """Time every method in interleaved rounds; robust accuracy of each attack's x_adv."""
    device = x.device
    threat = ThreatModel("linf", eps)
    ours = default_pgd()
    final_iterate = PGD(steps=STEPS, memory_format="auto")  # no early stopping
    before = PGD(steps=STEPS, memory_format="contiguous")  # robustlab before issue 15
    theirs = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=STEPS, random_start=True)
    methods = {
        "floor": lambda: floor_pass(model, x, y),
        "robustlab_pgd": lambda: ours(model, x, y, threat),
        "robustlab_pgd_final_iterate": lambda: final_iterate(model, x, y, threat),
        "robustlab_pgd_contiguous_final_iterate": lambda: before(model, x, y, threat),
        "robustlab_perturb_x_adv_only": lambda: final_iterate.perturb(model, x, y, threat),
        "torchattacks_pgd": lambda: theirs(x, y),
        "torchattacks_pgd_plus_result_forward": lambda: result_forward(model, theirs(x, y)),
    }
    if "bf16" in offered_precisions(device):
        bf16 = default_pgd(precision="bf16")
        methods["robustlab_pgd_bf16"] = lambda: bf16(model, x, y, threat)
    for fn in methods.values():  # warm-up (and the memory-format probe, cached per model)
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
    adversarial = {"clean": x, "torchattacks_pgd": theirs(x, y)}
    for key in ("robustlab_pgd", "robustlab_pgd_final_iterate", "robustlab_pgd_bf16"):
        if key in methods:
            adversarial[key] = methods[key]().x_adv
    with torch.no_grad():
        acc = {k: (model(v).argmax(1) == y).float().mean().item() for k, v in adversarial.items()}
    return {
        "model": name,
        "batch_size": len(y),
        "eps": eps,
        "step_size": eps / 4,
        "steps": STEPS,
        "repeats": repeats,
        "runtime": ours.runtime,
        "median_seconds": median,
        "ratio_to_floor": {k: v / median["floor"] for k, v in median.items()},
        # like for like: both tell which samples were broken / both return x_adv only
        "speedup_vs_torchattacks": median["torchattacks_pgd_plus_result_forward"] / median["robustlab_pgd"],
        "speedup_vs_torchattacks_x_adv_only": median["torchattacks_pgd"] / median["robustlab_perturb_x_adv_only"],
        "accuracy": acc,
    }


def precision_check(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> list[dict]:
    """PGD-10 robust accuracy in fp32 and bf16 (gradient steps only; the judge is fp32) on every zoo classifier."""
    rows = []
    for spec, eps in ZOO_CLASSIFIERS.items():
        model = load_model(spec, device=device)
        threat = ThreatModel("linf", eps)
        acc = {}
        for precision in ("fp32", "bf16"):
            out = default_pgd(precision=precision)(model, x, y, threat)
            with torch.no_grad():
                acc[precision] = (model(out.x_adv).argmax(1) == y).float().mean().item()
        rows.append({"model": spec, "eps": eps, "n": len(y), "robust_accuracy": acc,
                     "difference_points": 100 * (acc["bf16"] - acc["fp32"])})  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    """The docs' table: seconds, speed-up against torchattacks and robust accuracy, per model."""
    lines = [
        "| model (batch) | layout | floor s | robustlab PGD-10 s | torchattacks + result forward s | speed-up | "
        "final iterate, auto layout s | final iterate, contiguous s | bf16 s | robust % robustlab / torchattacks |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, a = r["median_seconds"], r["accuracy"]
        bf16 = f"{s['robustlab_pgd_bf16']:.3f}" if "robustlab_pgd_bf16" in s else "-"
        lines.append(
            f"| {r['model']} ({r['batch_size']}) | {r['runtime'].get('memory_format', '-')} | {s['floor']:.3f} | "
            f"{s['robustlab_pgd']:.3f} | {s['torchattacks_pgd_plus_result_forward']:.3f} | "
            f"**{r['speedup_vs_torchattacks']:.2f}x** | {s['robustlab_pgd_final_iterate']:.3f} | "
            f"{s['robustlab_pgd_contiguous_final_iterate']:.3f} | {bf16} | "
            f"{100 * a['robustlab_pgd']:.1f} / {100 * a['torchattacks_pgd']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--resnet-batch-size", type=int, default=None, help="default: 32 on the CPU, else --batch-size")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--resnet-repeats", type=int, default=None, help="default: half of --repeats, at least 3")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    parser.add_argument("--precision-check", type=int, default=1000, help="test images for bf16 vs fp32 (0: skip)")
    parser.add_argument("--models", default="cnn,mlp,resnet", help="which of cnn, mlp, resnet to time")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "attack_speed.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    test = load_dataset("fashion-mnist", "test")
    x = (test.images[: args.batch_size].float() / 255).to(device)
    y = test.labels[: args.batch_size].to(device)
    models = args.models.split(",")
    rows = [
        bench_model(f"zoo:fmnist-{m}", load_model(f"zoo:fmnist-{m}", device=device), x, y, 0.03, args.repeats)
        for m in ("cnn", "mlp")
        if m in models
    ]
    if "resnet" in models:  # a CIFAR-sized PreActResNet-18 (random weights: speed only) on random 32x32 images
        resnet = build_model("preact-resnet18", "cifar10").to(device).eval()
        g = torch.Generator().manual_seed(0)
        n = args.resnet_batch_size or (args.batch_size if device.type == "cuda" else 32)
        xc = torch.rand(n, 3, 32, 32, generator=g).to(device)
        yc = torch.randint(0, 10, (n,), generator=g).to(device)
        resnet_repeats = args.resnet_repeats or max(3, args.repeats // 2)
        rows.append(bench_model("preact-resnet18 (cifar shape)", resnet, xc, yc, 8 / 255, resnet_repeats))
    checks = []
    if args.precision_check and "bf16" in offered_precisions(device):
        xs = (test.images[: args.precision_check].float() / 255).to(device)
        checks = precision_check(xs, test.labels[: args.precision_check].to(device), device)
    result = {
        "benchmark": "attack_speed",
        "threads": torch.get_num_threads(),
        "results": rows,
        "bf16_check": checks,
        "environment": environment(" ".join(["python", *sys.argv])),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(
            f"{r['model']} (batch {r['batch_size']}, {r['runtime']}): speed-up vs torchattacks "
            f"{r['speedup_vs_torchattacks']:.2f}x (with success flags), {r['speedup_vs_torchattacks_x_adv_only']:.2f}x "
            f"(x_adv only); robust accuracy {r['accuracy']}"
        )
    print(table(rows))
    for c in checks:
        print(f"bf16 check {c['model']} eps {c['eps']} n={c['n']}: {c['robust_accuracy']} "
              f"({c['difference_points']:+.2f} points)")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
