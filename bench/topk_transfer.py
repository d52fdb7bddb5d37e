"""Top-k white-box and transfer attacks on Fashion-MNIST: the two claims of the CVPR 2022 top-k paper.

(1) At equal eps and steps, I-FGSM with the normalized CE loss reaches a higher top-k ASR than with CE for
    k > 1, white-box and transferred.
(2) Measured by top-k ASR for k > 1, I-FGSM transfers at least as well as FGSM.

Surrogates and targets are the zoo's differently built models (two SmallCNN seeds and an MLP); every model is
both a surrogate (row) and a target (column), so the diagonal is the white-box attack.

Run: ``python bench/topk_transfer.py`` (writes bench/results/topk_transfer.json and two PNGs at the first eps).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from robustlab import ThreatModel
from robustlab.attacks.registry import attack_from_spec
from robustlab.data import load_dataset
from robustlab.eval.transfer import plot_heatmaps, plot_topk_curves, transfer_matrix
from robustlab.io import environment, markdown_table, write_json
from robustlab.models import load_model

MODELS = ["fmnist-cnn", "fmnist-cnn-s1", "fmnist-mlp"]
ATTACKS = ["fgsm", "ifgsm", "ifgsm+cw", "ifgsm+normalized-ce"]
KS = [1, 2, 3, 5]
RESULTS = Path(__file__).parent / "results"


def pairs(result, transferred: bool) -> list[tuple[str, str]]:
    """(surrogate, target) pairs: the transfer pairs (surrogate != target) or the white-box diagonal."""
    return [(s, t) for s in result.sources for t in result.targets if (s != t) == transferred]


def compare(result, better: str, worse: str, ks: list[int], transferred: bool, strict: bool) -> dict:
    """Count the (pair, k) cases where ``better``'s top-k ASR beats (strict) or matches ``worse``'s."""
    cases = []
    for s, t in pairs(result, transferred):
        for k in ks:
            a, b = result.asr(better, s, t, k), result.asr(worse, s, t, k)
            cases.append(
                {"surrogate": s, "target": t, "k": k, better: a, worse: b, "holds": a > b if strict else a >= b}
            )
    held = sum(c["holds"] for c in cases)
    diffs = [c[better] - c[worse] for c in cases]
    return {
        "holds": held,
        "cases": len(cases),
        "ties": sum(d == 0 for d in diffs),
        "mean_difference": sum(diffs) / len(diffs),
        "failures": [c for c in cases if not c["holds"]],
    }


def mean_asr(result, attack: str, transferred: bool) -> dict[str, float]:
    """Top-k ASR of ``attack`` averaged over the transfer pairs (or over the white-box diagonal)."""
    chosen = pairs(result, transferred)
    return {str(k): sum(result.asr(attack, s, t, k) for s, t in chosen) / len(chosen) for k in result.ks}


def pairs_table(runs: dict, attacks: list[str] = ATTACKS[:2] + ATTACKS[3:]) -> str:
    """Per transfer pair and eps, each attack's ``top-1 / 2 / 3 / 5`` ASR (%) cells, from the JSON runs."""
    rows = []
    for eps, run in runs.items():
        for s in run["sources"]:
            for t in run["targets"]:
                if s != t:
                    metrics = [run["transfer"][a][s][t]["asr"] for a in attacks]
                    cells = [" / ".join(f"{100 * m[str(k)]:.1f}" for k in KS) for m in metrics]
                    rows.append([eps, f"{s} -> {t}", *cells])
    return markdown_table(["eps", "surrogate -> target", *attacks], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="Fashion-MNIST test images (default: 2000)")
    parser.add_argument("--eps", default="0.1,0.2", help="comma-separated Linf radii (default: 0.1,0.2)")
    parser.add_argument("--steps", type=int, default=10, help="I-FGSM steps, step size eps/steps (default: 10)")
    parser.add_argument("--out", default=str(RESULTS / "topk_transfer.json"))
    parser.add_argument("--tables-only", action="store_true", help="print the tables of an existing --out JSON")
    args = parser.parse_args(argv)
    if args.tables_only:
        saved = json.loads(Path(args.out).read_text())
        print(saved["summary_table"] + "\n\n" + pairs_table(saved["runs"]))
        return 0
    started = time.time()
    data = load_dataset("fashion-mnist", "test")
    x, y = data.images[: args.n].float() / 255, data.labels[: args.n].clone()
    models = {name: load_model(f"zoo:{name}") for name in MODELS}
    attacks = {spec: attack_from_spec(spec, steps=None if spec == "fgsm" else args.steps) for spec in ATTACKS}
    runs, claims, summary_rows = {}, {}, []
    for i, eps_text in enumerate(args.eps.split(",")):
        threat = ThreatModel("linf", eps_text)
        result = transfer_matrix(models, models, attacks, threat, (x, y), KS, batch_size=500)
        key = f"{threat.eps:g}"
        runs[key] = result.to_dict()
        later_ks = [k for k in KS if k > 1]
        claims[key] = {
            "1_nce_beats_ce_white_box": compare(result, "ifgsm+normalized-ce", "ifgsm", later_ks, False, True),
            "1_nce_beats_ce_transfer": compare(result, "ifgsm+normalized-ce", "ifgsm", later_ks, True, True),
            "2_ifgsm_transfers_at_least_as_well_as_fgsm": compare(result, "ifgsm", "fgsm", later_ks, True, False),
            "2b_ifgsm_nce_transfers_at_least_as_well_as_fgsm": compare(
                result, "ifgsm+normalized-ce", "fgsm", later_ks, True, False
            ),
            "top1_ifgsm_vs_fgsm_transfer": compare(result, "ifgsm", "fgsm", [1], True, False),
        }
        for attack in ATTACKS:
            for transferred in (False, True):
                means = mean_asr(result, attack, transferred)
                where = "transfer (mean of 6 pairs)" if transferred else "white-box (mean of 3)"
                summary_rows.append([key, attack, where, *[f"{100 * means[str(k)]:.1f}" for k in KS]])
        if i == 0:
            plot_heatmaps(result, RESULTS / "topk_transfer_heatmap.png")
            plot_topk_curves(result, RESULTS / "topk_transfer_curves.png")
        print(f"eps={key} done after {time.time() - started:.0f} s", file=sys.stderr)
    table = markdown_table(["eps", "attack", "setting", *[f"top-{k} ASR %" for k in KS]], summary_rows)
    report = {
        "benchmark": "topk_transfer",
        "command": "python bench/topk_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {"n": args.n, "eps": args.eps, "steps": args.steps, "models": MODELS, "attacks": ATTACKS, "ks": KS},
        "claims": claims,
        "summary_table": table,
        "runs": runs,
        "wall_time_s": round(time.time() - started, 1),
        "environment": environment(" ".join(["python", *sys.argv])),
    }
    write_json(args.out, report)
    print(table + "\n\n" + pairs_table(runs))
    for key, per_eps in claims.items():
        for name, c in per_eps.items():
            diff = 100 * c["mean_difference"]
            print(f"eps={key} {name}: holds in {c['holds']}/{c['cases']} ({c['ties']} ties), mean diff {diff:+.1f} pt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
