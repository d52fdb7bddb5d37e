"""Fast adversarial training on Fashion-MNIST with the zoo's CNN: every method, one budget, one run.

(1) per-epoch training time of each method as a ratio to standard training; (2) clean / PGD-50-10 /
AutoAttack accuracy at eps 0.1; (3) a setting where FGSM-RS catastrophically overfits (the monitor's PGD
accuracy collapses while FGSM accuracy stays high) and NoiseAug at the same setting does not.

Rerun: ``python bench/fast_at.py`` (about 12 minutes on 2 idle CPU cores, 23 on a loaded pair; ``--quick`` for a
smoke run). Time ratios use this single-threaded process's CPU time, which other processes' load barely moves.
Writes ``bench/results/fast_at.json`` and ``bench/results/fast_at_curves.png``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from robustlab.data import first_n, load_dataset
from robustlab.defenses import COMonitor, make_method
from robustlab.io import environment, markdown_table, write_json
from robustlab.models import build_model, seeded_weights
from robustlab.plots import save_png, subplots
from robustlab.threat import ThreatModel
from robustlab.training import TrainConfig, final_evaluation, train

RESULTS = Path(__file__).parent / "results"
METHODS = ["standard", "fgsm", "fgsm-rs", "noiseaug", "n-fgsm", "gradalign", "pgd"]
MAIN = {"eps": 0.1, "n_train": 3000, "epochs": 3, "batch_size": 128, "optimizer": "adam", "lr": 3e-3}
# the monitor checks every 20 steps and only logs (on_co="continue"), so the curves show what follows a CO
CO = {"eps": 0.3, "alpha": 2.0, "n_train": 5000, "epochs": 6, "optimizer": "adam", "lr": 3e-3, "every_steps": 20}
# AutoAttack's two APGD attacks (the bulk of its strength) on the points PGD-50-10 left robust, for these methods
EVAL = {"n_test": 200, "autoattack": "autoattack:apgd-ce,apgd-t", "autoattack_methods": ["fgsm-rs", "noiseaug", "pgd"]}
EVAL["monitor_n"] = 128


def fresh_model(seed: int = 0) -> torch.nn.Module:
    with seeded_weights(seed):
        return build_model("cnn", "fashion-mnist")


def run_method(name, threat, data, monitor_batch, setting, step_size=None, every_steps=0, on_co="continue"):
    """Train one method; returns (model, result, monitor)."""
    monitor = COMonitor(*monitor_batch, threat, every_steps=every_steps, on_co=on_co)
    config = TrainConfig(
        epochs=setting["epochs"],
        batch_size=setting.get("batch_size", 128),
        optimizer=setting["optimizer"],
        lr=setting["lr"],
        lr_schedule="cyclic",
        weight_decay=0.0 if setting["optimizer"] == "adam" else 5e-4,
        best_metric="monitor_pgd_acc",
    )
    model = fresh_model()
    result = train(model, make_method(name, threat, step_size), data, config, None, callbacks=[monitor])
    return model, result, monitor


def plot(main_runs: dict, co_runs: dict, path: Path) -> None:
    fig, axes = subplots(1, 3, figsize=(14, 3.8))
    ax = axes[0]
    for name, run in main_runs.items():
        ax.plot([h["epoch"] for h in run["history"]], [h["monitor_pgd_acc"] for h in run["history"]], "o-", label=name)
    ax.set(title=f"eps {MAIN['eps']}: PGD-10 accuracy (monitor batch)", xlabel="epoch", ylim=(0, 1))
    ax.legend(fontsize=7)
    for ax, name in zip(axes[1:], co_runs):
        checks = co_runs[name]["checks"]
        steps = [c["step"] for c in checks]
        for key, label in [("monitor_clean_acc", "clean"), ("monitor_fgsm_acc", "FGSM"), ("monitor_pgd_acc", "PGD")]:
            ax.plot(steps, [c[key] for c in checks], ".-", label=label)
        for c in checks:
            if c["co"]:
                ax.axvline(c["step"], color="red", alpha=0.25, lw=4)
        ax.set(title=f"{name}, eps {CO['eps']}, alpha {CO['alpha']} eps (red: CO)", xlabel="step", ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (numbers meaningless)")
    parser.add_argument("--out", default=str(RESULTS / "fast_at.json"))
    args = parser.parse_args(argv)
    if args.quick:
        MAIN.update(n_train=256, epochs=1)
        CO.update(n_train=256, epochs=1, every_steps=1)
        EVAL.update(n_test=32, autoattack_methods=["noiseaug"], monitor_n=32)
    torch.set_num_threads(1)  # on a small shared CPU one thread is faster and timings are steadier
    started = time.time()
    train_full = load_dataset("fashion-mnist", "train")
    test_full = load_dataset("fashion-mnist", "test")
    mon_x = train_full.images[-EVAL["monitor_n"] :].float() / 255  # a fixed training batch outside the subset
    mon_y = train_full.labels[-EVAL["monitor_n"] :].clone()

    threat = ThreatModel("linf", MAIN["eps"])
    data = first_n(train_full, MAIN["n_train"])
    main_runs: dict = {}
    for name in METHODS:
        model, result, monitor = run_method(name, threat, data, (mon_x, mon_y), MAIN)
        epoch_s = [h["epoch_seconds"] for h in result.history]
        epoch_cpu = [h["epoch_cpu_seconds"] for h in result.history]
        aa = EVAL["autoattack"] if name in EVAL["autoattack_methods"] else False
        evaluation = final_evaluation(model, first_n(test_full, EVAL["n_test"]), threat, autoattack=aa, batch_size=250)
        main_runs[name] = {
            "epoch_seconds": epoch_s,
            "epoch_seconds_median": statistics.median(epoch_s),
            "epoch_cpu_seconds": epoch_cpu,
            "epoch_cpu_seconds_median": statistics.median(epoch_cpu),
            "train_seconds": result.train_seconds,
            "clean_accuracy": evaluation["clean_accuracy"],
            "pgd_50_10_accuracy": evaluation["pgd_accuracy"],
            "autoattack_accuracy": evaluation.get("autoattack_accuracy"),
            "co_events": monitor.events,
            "history": result.history,
            "evaluation": evaluation,
        }
        print(
            f"{name}: {main_runs[name]['epoch_seconds_median']:.2f} s/epoch, clean {evaluation['clean_accuracy']:.3f}, "
            f"pgd {evaluation['pgd_accuracy']:.3f}, aa {evaluation.get('autoattack_accuracy')}",
            file=sys.stderr,
        )
    # the ratio uses CPU time of this single-threaded process: wall time on a shared machine mostly measures the
    # other processes' load (both are kept)
    base, base_wall = (main_runs["standard"][k] for k in ("epoch_cpu_seconds_median", "epoch_seconds_median"))
    for run in main_runs.values():
        run["time_ratio"] = run["epoch_cpu_seconds_median"] / base
        run["wall_time_ratio"] = run["epoch_seconds_median"] / base_wall

    co_threat = ThreatModel("linf", CO["eps"])
    co_data = first_n(train_full, CO["n_train"])
    co_runs: dict = {}
    for name in ["fgsm-rs", "noiseaug"]:
        _, result, monitor = run_method(
            name,
            co_threat,
            co_data,
            (mon_x, mon_y),
            CO,
            step_size=CO["alpha"] * CO["eps"],
            every_steps=CO["every_steps"],
            on_co="continue",
        )
        co_runs[name] = {
            "co_detected": bool(monitor.events),
            "co_events": monitor.events,
            "checks": monitor.checks,
            "final": result.history[-1],
            "best_epoch": result.best_epoch,
            "stop_reason": result.stop_reason,
            "steps_trained": sum(h["steps"] for h in result.history),
            "min_pgd_acc_after_first_epoch": min(
                (c["monitor_pgd_acc"] for c in monitor.checks if c["epoch"] > 1), default=None
            ),
        }
        print(f"{name} at eps {CO['eps']}: CO detected {bool(monitor.events)}", file=sys.stderr)

    rows = [
        [
            name,
            f"{r['time_ratio']:.2f}",
            f"{r['wall_time_ratio']:.2f}",
            f"{100 * r['clean_accuracy']:.1f}",
            f"{100 * r['pgd_50_10_accuracy']:.1f}",
            "-" if r["autoattack_accuracy"] is None else f"{100 * r['autoattack_accuracy']:.1f}",
        ]
        for name, r in main_runs.items()
    ]
    table = markdown_table(
        ["method", "time / standard (CPU)", "(wall)", "clean %", "PGD-50-10 %", "AutoAttack %"], rows
    )
    out = Path(args.out)
    write_json(
        out,
        {
            "benchmark": "fast_at",
            "command": "python bench/fast_at.py" + (" --quick" if args.quick else ""),
            "setting": {"main": MAIN, "co": CO, "eval": EVAL, "model": "cnn (the zoo's SmallCNN), fresh init seed 0"},
            "main": main_runs,
            "co": co_runs,
            "table_markdown": table,
            "wall_time_s": round(time.time() - started, 1),
            "environment": environment(" ".join(["python", *sys.argv])),
        },
    )
    plot(main_runs, co_runs, out.with_name(out.stem + "_curves.png"))
    print(table)
    print(
        f"CO setting eps {CO['eps']}, alpha {CO['alpha']} eps: "
        + ", ".join(f"{n} CO={r['co_detected']}" for n, r in co_runs.items())
    )
    print(f"wrote {out} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
