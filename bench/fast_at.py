"""Fast adversarial training on Fashion-MNIST with the zoo's CNN: every method, one budget, one run.

(1) per-epoch training time of each method as a ratio to standard training; (2) clean / PGD-50-10 /
AutoAttack accuracy at eps 0.1; (3) a setting where FGSM-RS catastrophically overfits (the monitor's PGD
accuracy collapses while FGSM accuracy stays high) and NoiseAug at the same setting does not.

Rerun: ``python bench/fast_at.py`` (about 12 minutes on 2 idle CPU cores, 23 on a loaded pair; ``--quick`` for a
smoke run). Time ratios use this single-threaded process's CPU time, which other processes' load barely moves.
Writes ``bench/results/fast_at.json`` and ``bench/results/fast_at_curves.png``; it also times every method with the
contiguous and the channels_last memory format (interleaved) and compares NoiseAug's and N-FGSM's training inputs
(``--memory-format-timing`` / ``--noise-compare`` run one part alone and update fast_at.json).

``--sweep`` runs the catastrophic-overfitting sweep (bench/fast_at_sweep.py: eps x step x method, the CO monitor,
PGD-50-10, a rollback demo) into ``bench/results/fast_at_sweep.json`` / ``.png``, resumable through a run cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from robustlab.data import first_n, load_dataset
from robustlab.defenses import COMonitor, make_method
from robustlab.io import environment, markdown_table, write_json
from robustlab.models import build_model, seeded_weights
from robustlab.plots import save_png, subplots
from robustlab.threat import ThreatModel
from robustlab.training import TrainConfig, final_evaluation, train
from robustlab.training.report import evaluation_summary

sys.path.insert(0, str(Path(__file__).parent))  # bench/fast_at_sweep.py, when imported from elsewhere (tests)
import fast_at_sweep as sweep  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METHODS = ["standard", "fgsm", "fgsm-rs", "noiseaug", "n-fgsm", "gradalign", "pgd"]
MAIN = {"eps": 0.1, "n_train": 3000, "epochs": 3, "batch_size": 128, "optimizer": "adam", "lr": 3e-3}
# the monitor checks every 20 steps and only logs (on_co="continue"), so the curves show what follows a CO
CO = {"eps": 0.3, "alpha": 2.0, "n_train": 5000, "epochs": 6, "optimizer": "adam", "lr": 3e-3, "every_steps": 20}
# AutoAttack's two APGD attacks (the bulk of its strength) on the points PGD-50-10 left robust, for these methods
EVAL = {"n_test": 200, "autoattack": "autoattack:apgd-ce,apgd-t", "autoattack_methods": ["fgsm-rs", "noiseaug", "pgd"]}
EVAL["monitor_n"] = 128
# the memory-format timing: each method, `rounds` x (contiguous, channels_last) in alternating order, `steps` steps each
TIMING = {"rounds": 3, "steps": 12, "n_train": 3000}
FORMATS = ("contiguous", "channels_last")
NOISE = {"n": 512, "eps": 0.1, "model": "zoo:fmnist-cnn"}


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


def time_memory_formats(methods: list[str], threat: ThreatModel, data, rounds: int, steps: int) -> dict[str, Any]:
    """Seconds per training step of each method with the contiguous and the channels_last layout (issue 15), the two
    interleaved in this process (order alternating by round) so that load drift hits both; medians over rounds."""
    cpu: dict = {m: {f: [] for f in FORMATS} for m in methods}
    wall: dict = {m: {f: [] for f in FORMATS} for m in methods}
    for r in range(rounds):
        for name in methods:
            for fmt in FORMATS if r % 2 == 0 else FORMATS[::-1]:
                config = TrainConfig(epochs=1, batch_size=128, optimizer="adam", lr=3e-3, weight_decay=0.0,
                                     memory_format=fmt, max_steps_per_epoch=steps)  # fmt: skip
                epoch = train(fresh_model(), make_method(name, threat), data, config, None).history[0]
                cpu[name][fmt].append(epoch["epoch_cpu_seconds"] / epoch["steps"])
                wall[name][fmt].append(epoch["epoch_seconds"] / epoch["steps"])
    steps_60k = -(-60000 // 128)
    out: dict[str, Any] = {"rounds": rounds, "steps_per_measure": steps, "batch_size": 128, "threads": 1}
    for name in methods:
        med = {f: statistics.median(cpu[name][f]) for f in FORMATS}
        out[name] = {
            **{f"{f}_cpu_s_per_step": round(med[f], 4) for f in FORMATS},
            **{f"{f}_cpu_s_per_60k_epoch": round(med[f] * steps_60k, 1) for f in FORMATS},
            **{f"{f}_wall_s_per_step": round(statistics.median(wall[name][f]), 4) for f in FORMATS},
            "speedup_channels_last": round(med["contiguous"] / med["channels_last"], 3),
            "samples_cpu_s_per_step": cpu[name],
        }
    return out


def memory_format_table(timing: dict[str, Any]) -> str:
    """CPU seconds per step with each layout and the speed-up, a row per method."""
    rows = [
        [
            m,
            f"{t['contiguous_cpu_s_per_step']:.4f}",
            f"{t['channels_last_cpu_s_per_step']:.4f}",
            f"{t['contiguous_cpu_s_per_60k_epoch']:.0f} / {t['channels_last_cpu_s_per_60k_epoch']:.0f}",
            f"{t['speedup_channels_last']:.2f}x",
        ]  # fmt: skip
        for m, t in timing.items()
        if isinstance(t, dict)
    ]
    headers = ["method", "contiguous s/step", "channels_last s/step", "s per 60k epoch", "speed-up"]
    return markdown_table(headers, rows)


def input_stats(x: torch.Tensor, x_train: torch.Tensor, eps: float) -> dict[str, float]:
    """How far a training input lies from x, and how much of it sits on the bounds [0, 1]."""
    d = (x_train - x).flatten(1)
    return {
        "mean_linf_distance": round(d.abs().amax(1).mean().item(), 4),
        "mean_l2_distance": round(d.norm(dim=1).mean().item(), 4),
        "fraction_pixels_beyond_eps": round((d.abs() > eps * (1 + 1e-5)).float().mean().item(), 4),
        "fraction_pixels_on_bounds": round(((x_train <= 0) | (x_train >= 1)).float().mean().item(), 4),
    }


def noise_compare(n: int = NOISE["n"], eps: float = NOISE["eps"], model: torch.nn.Module | None = None) -> dict:
    """NoiseAug and N-FGSM training inputs on the first ``n`` training images at Linf ``eps``, each method's noise
    drawn from its own generator seeded alike: with the defaults they coincide (max difference 0); Gaussian noise
    or a step above eps (N-FGSM takes it in full, NoiseAug projects it to eps) makes them differ."""
    from robustlab.models import load_model
    from robustlab.models.mode import temporary_mode

    given = model is not None
    model = model if model is not None else load_model(NOISE["model"])
    data = load_dataset("fashion-mnist", "train")
    x, y = data.images[:n].float() / 255, data.labels[:n].clone()
    threat = ThreatModel("linf", eps)
    variants = {
        "noiseaug (uniform, sigma 2, step 1.25 eps)": make_method("noiseaug", threat),
        "n-fgsm (k 2, step eps)": make_method("n-fgsm", threat),
        "noiseaug (gaussian, sigma 2, step 1.25 eps)": make_method("noiseaug", threat, noise="gaussian"),
        "noiseaug (uniform, sigma 2, step 2 eps)": make_method("noiseaug", threat, 2 * eps),
        "n-fgsm (k 2, step 2 eps)": make_method("n-fgsm", threat, 2 * eps),
    }
    with temporary_mode(model, training=False):
        inputs = {name: method.training_input(model, x, y) for name, method in variants.items()}
    names = list(inputs)
    diff = lambda a, b: (inputs[names[a]] - inputs[names[b]]).abs().max().item()  # noqa: E731
    return {
        "setting": {"n": n, "eps": eps, "norm": "linf", "model": "given" if given else NOISE["model"]},
        "inputs": {name: input_stats(x, xt, eps) for name, xt in inputs.items()},
        "max_abs_difference": {
            "noiseaug uniform vs n-fgsm (defaults)": diff(0, 1),
            "noiseaug gaussian vs n-fgsm (defaults)": diff(2, 1),
            "noiseaug step 2 eps vs noiseaug step 1.25 eps": diff(3, 0),
            "n-fgsm step 2 eps vs n-fgsm step eps": diff(4, 1),
        },
    }


def update_json(path: Path, key: str, value: Any) -> None:
    """Set one part of a results file, keeping the rest (a part run alone)."""
    data = json.loads(path.read_text()) if path.is_file() else {"benchmark": "fast_at"}
    data[key] = value
    write_json(path, data)


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (numbers meaningless)")
    parser.add_argument("--out", default=str(RESULTS / "fast_at.json"))
    parser.add_argument("--noise-compare", action="store_true", help="only NoiseAug vs N-FGSM inputs (seconds)")
    parser.add_argument("--memory-format-timing", action="store_true", help="only the layout timing (minutes)")
    parser.add_argument("--timing-rounds", type=int, default=TIMING["rounds"])
    parser.add_argument("--timing-steps", type=int, default=TIMING["steps"])
    sw = parser.add_argument_group("the catastrophic-overfitting sweep")
    sw.add_argument("--sweep", action="store_true", help="the eps x step x method grid, then the rollback demo")
    sw.add_argument("--rollback-demo", action="store_true", help="only the rollback demo (FGSM-RS grid runs first)")
    sw.add_argument("--sweep-n", type=int, default=15000, help="training images (the full set is 60000)")
    sw.add_argument("--sweep-epochs", type=int, default=10)
    sw.add_argument("--sweep-eval-n", type=int, default=500, help="first test images for clean and PGD-50-10")
    sw.add_argument("--sweep-monitor-n", type=int, default=512, help="the CO monitor's fixed training batch")
    sw.add_argument("--sweep-eps", type=float, nargs="+", default=list(sweep.SWEEP_EPS))
    sw.add_argument("--sweep-steps", type=float, nargs="+", default=list(sweep.SWEEP_STEPS), help="in units of eps")
    sw.add_argument("--sweep-methods", nargs="+", default=list(sweep.SWEEP_METHODS), choices=list(sweep.SWEEP_METHODS))
    sw.add_argument("--no-rollback-demo", action="store_true")
    sw.add_argument(
        "--rollback-every",
        type=int,
        default=50,
        help="the rollback run's monitor also checks every N "
        "steps (0: epoch ends only); its best state can then lie inside an epoch",
    )
    sw.add_argument("--jobs", type=int, default=2, help="runs trained in parallel (one thread each)")
    sw.add_argument(
        "--sweep-out",
        default=str(RESULTS / "fast_at_sweep.json"),
        help="the sweep's JSON (a PNG next to it); in --out's folder, --out also gets its table",
    )
    sw.add_argument("--cache", default=str(RESULTS / "fast_at_sweep_cache.json"), help="finished runs by settings")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sweep or args.rollback_demo:
        torch.set_num_threads(1)  # as each worker process does
    if args.sweep:
        result = sweep.run_sweep(args, log)
        sweep_out, out = Path(args.sweep_out), Path(args.out)
        if sweep_out.parent.resolve() == out.parent.resolve():  # the results folder: fast_at.json points to it
            update_json(out, "sweep", sweep.headline(result, sweep_out.name))
        print(sweep.summary(result))
        return 0
    if args.rollback_demo:
        cache = sweep.RunCache(Path(args.cache))
        cells = sweep.grid(args, labels=["fgsm-rs"])
        sweep.check(cells, args.jobs, args.rollback_every)
        sweep.run_all([c["settings"] for c in cells], cache, args.jobs, log)
        demo = sweep.rollback_demo(cells, sweep.sweep_base(args), cache, args.jobs, log, args.rollback_every)
        write_json(Path(args.sweep_out).with_name("fast_at_rollback.json"), demo)
        print(json.dumps({k: demo[k] for k in ("setting", "why")}))
        return 0
    out = Path(args.out)
    if args.noise_compare:
        result = noise_compare()
        update_json(out, "noise_compare", {"command": "python " + " ".join(sys.argv), **result})
        print(json.dumps(result, indent=1))
        return 0
    if args.quick:
        MAIN.update(n_train=256, epochs=1)
        CO.update(n_train=256, epochs=1, every_steps=1)
        EVAL.update(n_test=32, autoattack_methods=["noiseaug"], monitor_n=32)
        args.timing_rounds, args.timing_steps = 1, 2
    torch.set_num_threads(1)  # on a small shared CPU one thread is faster and timings are steadier
    started = time.time()
    train_full = load_dataset("fashion-mnist", "train")
    timing_data = first_n(train_full, TIMING["n_train"])
    if args.memory_format_timing:
        timing = time_memory_formats(METHODS, ThreatModel("linf", MAIN["eps"]), timing_data, args.timing_rounds,
                                     args.timing_steps)  # fmt: skip
        update_json(out, "memory_format", {"command": "python " + " ".join(sys.argv), **timing})
        print(memory_format_table(timing))
        return 0
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
        evaluation = evaluation_summary(
            final_evaluation(model, first_n(test_full, EVAL["n_test"]), threat, autoattack=aa, batch_size=250))
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
    timing = time_memory_formats(METHODS, threat, timing_data, args.timing_rounds, args.timing_steps)
    noise = noise_compare(n=64 if args.quick else NOISE["n"])
    write_json(
        out,
        {
            "benchmark": "fast_at",
            "command": "python bench/fast_at.py" + (" --quick" if args.quick else ""),
            "setting": {"main": MAIN, "co": CO, "eval": EVAL, "model": "cnn (the zoo's SmallCNN), fresh init seed 0"},
            "main": main_runs,
            "co": co_runs,
            "table_markdown": table,
            "memory_format": timing,
            "noise_compare": noise,
            "wall_time_s": round(time.time() - started, 1),
            "environment": environment(" ".join(["python", *sys.argv])),
        },
    )
    plot(main_runs, co_runs, out.with_name(out.stem + "_curves.png"))
    print(table)
    print(memory_format_table(timing))
    print(f"NoiseAug vs N-FGSM, max |difference| of the training inputs: {noise['max_abs_difference']}")
    print(
        f"CO setting eps {CO['eps']}, alpha {CO['alpha']} eps: "
        + ", ".join(f"{n} CO={r['co_detected']}" for n, r in co_runs.items())
    )
    print(f"wrote {out} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    from robustlab.errors import RobustlabError

    try:
        sys.exit(main())
    except RobustlabError as error:  # a bad setting: one line, before any training
        print(f"fast_at.py: {error}", file=sys.stderr)
        sys.exit(2)
