"""The cost of every answer: robust accuracy, forward + backward passes and seconds of AutoAttack-class evaluations.

Run: ``python bench/eval_cost.py`` (writes bench/results/eval_cost.json and prints a Markdown table). Per model
(``--models``: the zoo's robust models at ``--eps``, zoo:fmnist-cnn at a small eps written ``MODEL@EPS``), on the
first ``--n`` Fashion-MNIST test images, Linf, one evaluator entry per row:

- ``pgd``: robustlab's PGD-10 with early stopping;
- ``default``: ``robustlab eval``'s default protocol (APGD-CE, then APGD-T towards 2 MALT-ranked targets; each
  stage's broken samples, passes and seconds under ``stages``);
- ``aa``: robustlab's native AutoAttack preset (APGD-CE, APGD-T, FAB-T/FMN, Square), when it is registered;
- ``autoattack``: pyautoattack's standard version (the reference);
- ``torchattacks:AutoAttack``: torchattacks' AutoAttack (standard);
- ``--extra`` specs (``apgd``, ``apgd-t``, ``square``, ``fmn``, ...) when registered.

A row whose spec is not registered is listed under ``skipped``. For each row: robust accuracy with its 95 %
Clopper-Pearson interval, the passes robustlab's counter saw (images forward, input gradients backward; the clean
pass counted apart), seconds, and the samples on which the row and pyautoattack disagree. Rows run interleaved
model by model (``--rounds`` repeats the cycle; the median seconds are reported), so a slow spell of a shared
machine does not land on one row. ``--device cuda`` (the default when a GPU is present) times it on the GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from robustlab import ThreatModel
from robustlab.data import load_dataset
from robustlab.errors import RobustlabError
from robustlab.eval import EvalConfig, Evaluator
from robustlab.eval.intervals import clopper_pearson
from robustlab.io import environment, markdown_table, write_json
from robustlab.models import load_model

ROWS = ("pgd", "default", "aa", "autoattack", "torchattacks:AutoAttack")
REFERENCE = "autoattack"
MODELS = "zoo:fmnist-cnn-pgdat,zoo:fmnist-cnn-noiseaug,zoo:fmnist-cnn@0.02"


def build_rows(specs: list[str], seed: int) -> tuple[dict, dict[str, str]]:
    """``{spec: attack}`` for the registered specs (the CLI's defaults) and ``{spec: why}`` for the others."""
    attacks, skipped = {}, {}
    for spec in specs:
        try:
            attacks[spec] = EvalConfig(eps=(0.1,), attacks=(spec,), seed=seed, only_robust=False).build()[spec]
        except (RobustlabError, ImportError) as exc:
            skipped[spec] = str(exc).splitlines()[0]
    return attacks, skipped


def run_row(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, spec: str, attack) -> dict:
    """One evaluator entry: robust flags, passes and seconds."""
    evaluator = Evaluator({spec: attack}, ThreatModel("linf", eps), batch_size=len(y))
    start = time.perf_counter()
    result = evaluator.run(model, (x, y))
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    robust, entries = int(result.robust.sum()), list(evaluator.attacks)  # a protocol's stages: entries of their own
    stages = {name: {"broken": int(result.broken[name].sum()), "forward_passes": result.forward_passes[name],
                     "backward_passes": result.backward_passes[name], "seconds": round(result.seconds[name], 3)}
              for name in entries}  # fmt: skip
    return {
        "robust": result.robust,
        "robust_accuracy": robust / len(y),
        "robust_accuracy_ci": list(clopper_pearson(robust, len(y))),
        "clean_accuracy": result.clean_accuracy,
        "attacked": int(result.attacked[entries[0]].sum()),
        "forward_passes": sum(s["forward_passes"] for s in stages.values()),
        "backward_passes": sum(s["backward_passes"] for s in stages.values()),
        "clean_passes": result.clean_passes,
        "seconds": seconds,
        **({"stages": stages} if len(stages) > 1 else {}),
    }


def bench_model(
    spec: str, eps: float, args: argparse.Namespace, attacks: dict, device: torch.device, save=lambda m: None
) -> dict:
    """Every row on one model, ``rounds`` interleaved cycles; counts and accuracy from the first cycle. ``save``
    gets the model's entry after every row (a run cut short keeps what it measured)."""
    data = load_dataset("fashion-mnist", "test")
    x = (data.images[: args.n].float() / 255).to(device)
    y = data.labels[: args.n].clone().to(device)
    model = load_model(spec, device=device)
    run_row(model, x[:2], y[:2], eps, "pgd", attacks.get("pgd") or next(iter(attacks.values())))  # warm-up, untimed
    runs: dict[str, list[dict]] = {name: [] for name in attacks}
    for round_ in range(args.rounds):
        for name, attack in attacks.items():
            runs[name].append(run_row(model, x, y, eps, name, attack))
            save(summarise(spec, eps, len(y), {k: v for k, v in runs.items() if v}))
            r = runs[name][-1]
            line = f"{r['forward_passes']} fwd + {r['backward_passes']} bwd, {r['seconds']:.1f} s"
            print(f"{spec} eps {eps:g} round {round_}: {name}: {100 * r['robust_accuracy']:.1f} %, {line}",
                  file=sys.stderr)
    return summarise(spec, eps, len(y), runs)


def summarise(spec: str, eps: float, n: int, runs: dict[str, list[dict]]) -> dict:
    """A model's entry: per row the first cycle's numbers, the median seconds, disagreements with the reference."""
    rows = {}
    reference = runs[REFERENCE][0]["robust"] if REFERENCE in runs else None
    for name, tries in runs.items():
        first = dict(tries[0])
        robust = first.pop("robust")
        first["seconds"] = round(statistics.median(t["seconds"] for t in tries), 3)
        first["seconds_per_round"] = [round(t["seconds"], 3) for t in tries]
        if reference is not None and name != REFERENCE:
            first["robust_here_not_in_reference"] = (robust & ~reference).nonzero().squeeze(1).tolist()
            first["robust_in_reference_not_here"] = (reference & ~robust).nonzero().squeeze(1).tolist()
        rows[name] = first
    return {"model": spec, "eps": eps, "n": int(n), "rows": rows}


def table(results: list[dict]) -> str:
    """The Markdown table of docs/benchmarks.md."""
    out = []
    for m in results:
        for name, r in m["rows"].items():
            lo, hi = r["robust_accuracy_ci"]
            out.append([
                m["model"], f"{m['eps']:g}", f"`{name}`",
                f"{100 * r['robust_accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]",
                r["forward_passes"], r["backward_passes"], r["forward_passes"] + r["backward_passes"],
                f"{r['seconds']:.1f}",
            ])  # fmt: skip
    headers = ["model", "eps", "attack", "robust % [95 % CI]", "forward", "backward", "passes", "seconds"]
    return markdown_table(headers, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="first N test images (default 1000)")
    p.add_argument("--models", default=MODELS, help=f"MODEL or MODEL@EPS, comma-separated (default {MODELS})")
    p.add_argument("--eps", type=float, default=0.1, help="Linf eps of models given without @EPS (default 0.1)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"specs compared (default {','.join(ROWS)})")
    p.add_argument("--extra", default="", help="more specs, e.g. apgd,apgd-t,square,fmn (each when registered)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved cycles; seconds are their median (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: a shared CPU contends)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_cost.json"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    specs = [s for s in (args.rows + "," + args.extra).split(",") if s.strip()]
    attacks, skipped = build_rows(list(dict.fromkeys(s.strip() for s in specs)), args.seed)
    results: list[dict] = []
    command = "python bench/eval_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def save(done: bool, partial: dict | None = None) -> None:
        write_json(args.out, {
            "benchmark": "eval_cost", "command": command, "complete": done, "n": args.n, "norm": "linf",
            "device": str(device), "threads": args.threads, "rounds": args.rounds, "seed": args.seed,
            "rows": list(attacks),
            "skipped": skipped, "reference": REFERENCE, "results": results + ([partial] if partial else []),
            "environment": environment(None),
        })  # fmt: skip

    for entry in args.models.split(","):
        spec, _, eps = entry.strip().partition("@")
        eps_value = float(eps) if eps else args.eps
        results.append(bench_model(spec, eps_value, args, attacks, device, lambda m: save(False, m)))
    save(True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
