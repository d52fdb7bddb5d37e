"""DeACL's ceiling is its teacher: the SSL bench's DeACL recipe run longer from three teachers, next to supervised
PGD-AT at the same budget, so the second half of issue 6's goal (DeACL SLF within 10 points of PGD-AT) can be
read against teacher quality.

Teachers: the SimCLR encoder of ``zoo:fmnist-simclr-slf`` (the ``ssl_robust.py --budget large --zoo`` teacher,
labels unused), the supervised non-robust ``zoo:fmnist-cnn`` and the supervised PGD-AT ``zoo:fmnist-cnn-pgdat``
(labels were used to train these two: they are references for what a teacher of that quality gives, not
label-free results). The student never sees a label; SLF and the evaluation are those of ``ssl_robust.py``.

    python bench/deacl_teachers.py              # 12 robust epochs, ~15 minutes on a quiet 2-core CPU
    python bench/deacl_teachers.py --epochs 6   # bench/results/deacl_teachers_6.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ssl_robust import LARGE, bench_data, deacl_student, evaluate, fine_tune, robust_config, seeded, timed_train
from torch.utils.data import Subset

from robustlab.defenses.methods import PGDAT
from robustlab.io import environment, write_json
from robustlab.models import build_model, load_model

ROOT = Path(__file__).resolve().parent
TEACHERS = {
    "simclr": "zoo:fmnist-simclr-slf",  # self-supervised: the teacher DeACL is meant for
    "supervised": "zoo:fmnist-cnn",  # labels used, not robust: an upper bound on what SSL could give
    "robust": "zoo:fmnist-cnn-pgdat",  # labels used and robust: beyond DeACL's setting, for scale
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12, help="robust training epochs for DeACL and PGD-AT")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/deacl_teachers[_E].json)")
    args = parser.parse_args()
    s = {**LARGE, "robust_epochs": args.epochs}
    suffix = "" if args.epochs == 12 else f"_{args.epochs}"
    out = args.out or str(ROOT / "results" / f"deacl_teachers{suffix}.json")
    started = time.time()
    load_at_start = os.getloadavg()
    threat, train_full, _, x_eval, y_eval = bench_data(s)
    robust_set = Subset(train_full, range(s["robust_train_n"]))
    slf_set = Subset(train_full, range(s["slf_train_n"]))
    rows: dict[str, dict] = {}

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {msg}", flush=True)

    def score(net) -> dict:
        return evaluate(net, x_eval, y_eval, threat, s["autoattack"], s["seed"])

    for name, spec in TEACHERS.items():
        teacher = load_model(spec)
        teacher_slf, _ = fine_tune(teacher, "slf", s, slf_set, threat)
        student, seconds = deacl_student(teacher, s["deacl"], s, robust_set, threat)
        student_slf, _ = fine_tune(student, "slf", s, slf_set, threat)
        rows[f"{name}_teacher"] = {
            "teacher": spec,
            "teacher_slf": score(teacher_slf),
            "deacl_seconds": round(seconds, 1),
            "deacl_slf": score(student_slf),
        }
        log(f"{name} teacher: {rows[f'{name}_teacher']}")

    supervised = seeded(lambda: build_model("cnn", "fashion-mnist"), s["seed"])
    pgd_seconds = timed_train(supervised, PGDAT(threat, steps=s["inner_steps"]), robust_set, robust_config(s))
    rows["supervised_pgd_at"] = {
        "train_seconds": round(pgd_seconds, 1),
        **score(supervised),
    }
    log(f"supervised PGD-AT: {rows['supervised_pgd_at']}")

    pgd_aa = rows["supervised_pgd_at"]["autoattack_accuracy"]
    gaps = {
        name: round(pgd_aa - r["deacl_slf"]["autoattack_accuracy"], 4) for name, r in rows.items() if "_teacher" in name
    }
    report = {
        "benchmark": "deacl_teachers",
        "command": "python bench/deacl_teachers.py" + ("" if args.epochs == 12 else f" --epochs {args.epochs}"),
        "dataset": "fashion-mnist",
        "threat": threat.to_dict(),
        "settings": s,
        "results": rows,
        "pgd_at_minus_deacl_slf_autoattack": gaps,
        "wall_time_s": round(time.time() - started, 1),
        "load_average_1min_start_end": [round(load_at_start[0], 2), round(os.getloadavg()[0], 2)],
        "environment": environment(" ".join(["python", *sys.argv])),
    }
    write_json(out, report)
    log(f"PGD-AT minus DeACL SLF (AutoAttack): {gaps}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
