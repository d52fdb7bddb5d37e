"""The catastrophic-overfitting (CO) sweep of ``bench/fast_at.py --sweep``: where FGSM-RS collapses on Fashion-MNIST
and what FGSM, NoiseAug (uniform and Gaussian noise) and N-FGSM do there, then the CO monitor's rollback rescuing a
collapsing FGSM-RS run.

Every run goes through the library: :func:`robustlab.training.train` with :class:`robustlab.defenses.COMonitor`
(``on_co="continue"``, a check each epoch) and :func:`robustlab.training.final_evaluation` (the evaluator's clean
and PGD-50-10 accuracy, early stopping on). Runs are independent processes (``jobs``), and each finished run is
written at once, atomically, to a cache keyed by its complete settings: a killed sweep rerun with the same arguments
trains only what is missing, and a changed setting is never served a run made under another.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from robustlab.io import environment, markdown_table, write_json

RESULTS = Path(__file__).parent / "results"
SWEEP_EPS = (0.15, 0.2, 0.25, 0.3)
SWEEP_STEPS = (1.25, 2.0)  # step size in units of eps
# label -> (method, options); NoiseAug's noise_sigma and N-FGSM's noise multiple stay at the library's default (2)
SWEEP_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "fgsm": ("fgsm", {}),
    "fgsm-rs": ("fgsm-rs", {}),
    "noiseaug-uniform": ("noiseaug", {"noise": "uniform"}),
    "noiseaug-gaussian": ("noiseaug", {"noise": "gaussian"}),
    "n-fgsm": ("n-fgsm", {}),
}
# FGSM from zero and NoiseAug project onto the eps-ball around their start, so any step >= eps is a step of eps:
# their runs at 1.25 and 2 eps are one training (tests/test_fast_at.py checks the training inputs are identical)
PROJECTED_FROM_START = ("fgsm", "noiseaug")
CACHE_VERSION = 1  # bump when a change of code makes cached runs stale


def run_settings(label: str, eps: float, step: float, base: dict[str, Any], on_co: str = "continue") -> dict:
    """The complete settings of one run (its cache key): the method, eps, the step it trains with and the rest."""
    method, options = SWEEP_METHODS[label]
    effective = min(step, 1.0) if method in PROJECTED_FROM_START else step
    return {"label": label, "method": method, "options": options, "eps": eps, "step_eps": effective,
            "on_co": on_co, **base, "cache_version": CACHE_VERSION}  # fmt: skip


def cache_key(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True)


def train_one(settings: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one run (in a worker process or in this one) and return its record."""
    from robustlab.data import first_n, load_dataset
    from robustlab.defenses import COMonitor, make_method
    from robustlab.models import build_model, seeded_weights
    from robustlab.threat import ThreatModel
    from robustlab.training import TrainConfig, final_evaluation, train
    from robustlab.training.report import evaluation_summary

    s, run_cpu_started = settings, time.process_time()
    threat = ThreatModel("linf", s["eps"])
    train_full = load_dataset("fashion-mnist", "train")
    x_mon = train_full.images[-s["monitor_n"] :].float() / 255  # fixed; outside the first n_train unless n is ~60000
    y_mon = train_full.labels[-s["monitor_n"] :].clone()
    monitor = COMonitor(x_mon, y_mon, threat, on_co=s["on_co"], every_steps=s.get("monitor_every", 0))
    config = TrainConfig(
        epochs=s["epochs"], batch_size=s["batch_size"], optimizer="adam", lr=s["lr"], lr_schedule="cyclic",
        weight_decay=0.0, seed=s["seed"], best_metric="monitor_pgd_acc", memory_format=s["memory_format"],
    )  # fmt: skip
    with seeded_weights(s["seed"]):
        model = build_model("cnn", "fashion-mnist")
    method = make_method(s["method"], threat, s["step_eps"] * s["eps"], **s["options"])
    result = train(model, method, first_n(train_full, s["n_train"]), config, None, callbacks=[monitor])
    test = first_n(load_dataset("fashion-mnist", "test"), s["eval_n"])
    started, cpu_started = time.perf_counter(), time.process_time()
    evaluation = evaluation_summary(final_evaluation(model, test, threat, batch_size=250))
    eval_seconds, eval_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    epochs = [
        {k: c[k] for k in ("epoch", "monitor_clean_acc", "monitor_fgsm_acc", "monitor_pgd_acc", "co")}
        for c in monitor.checks
    ]
    return {
        "settings": settings,
        "epochs": epochs,
        "co_flagged": bool(monitor.events),
        "co_epochs": [e["epoch"] for e in monitor.events],
        "stop_reason": result.stop_reason,
        "best_epoch": result.best_epoch,
        "clean_accuracy": evaluation["clean_accuracy"],
        "pgd_50_10_accuracy": evaluation["pgd_accuracy"],
        "evaluation_n": evaluation["n"],
        "train_seconds": round(result.train_seconds, 1),
        "train_cpu_seconds": round(sum(h["epoch_cpu_seconds"] for h in result.history), 1),
        "eval_seconds": round(eval_seconds, 1),
        "eval_cpu_seconds": round(eval_cpu_seconds, 1),  # one thread: CPU time, which the machine's load barely moves
        "run_cpu_seconds": round(time.process_time() - run_cpu_started, 1),  # training, monitor, evaluation, loading
    }


def _worker(settings: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)  # jobs processes on a small CPU: one thread each
    return train_one(settings)


class RunCache:
    """Finished runs by their complete settings, in one JSON file rewritten atomically after each run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.runs: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self.runs = json.loads(self.path.read_text()).get("runs", {})

    def get(self, settings: dict[str, Any]) -> dict[str, Any] | None:
        return self.runs.get(cache_key(settings))

    def put(self, record: dict[str, Any]) -> None:
        self.runs[cache_key(record["settings"])] = record
        write_json(self.path, {"cache_version": CACHE_VERSION, "runs": self.runs})


def run_all(
    settings_list: Sequence[dict[str, Any]], cache: RunCache, jobs: int, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Each run's record, in order: from the cache where finished, else trained (``jobs`` processes) and cached."""
    todo, seen = [], set()
    for s in settings_list:
        if cache.get(s) is None and cache_key(s) not in seen:
            todo.append(s)
            seen.add(cache_key(s))
    cached = len({cache_key(s) for s in settings_list}) - len(todo)
    distinct = len(seen) + cached
    log(f"{len(settings_list)} runs ({distinct} distinct trainings): {cached} from the cache, {len(todo)} to train")
    done = 0

    def finished(record: dict[str, Any]) -> None:
        nonlocal done
        cache.put(record)
        done += 1
        s = record["settings"]
        log(f"[{done}/{len(todo)}] {s['label']} eps {s['eps']} step {s['step_eps']} eps: clean "
            f"{record['clean_accuracy']:.3f} pgd {record['pgd_50_10_accuracy']:.3f} CO {record['co_epochs']} "
            f"({record['train_seconds']:.0f} s)")  # fmt: skip

    if jobs <= 1 or len(todo) <= 1:
        for s in todo:
            finished(train_one(s))
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
        with futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            for fut in futures.as_completed([pool.submit(_worker, s) for s in todo]):
                finished(fut.result())
    return [cache.get(s) for s in settings_list]


def cell(record: dict[str, Any]) -> str:
    co = f"CO ep {record['co_epochs'][0]}" if record["co_flagged"] else "no CO"
    return f"{100 * record['clean_accuracy']:.1f} / {100 * record['pgd_50_10_accuracy']:.1f} ({co})"


def sweep_table(runs: list[dict[str, Any]], labels: Sequence[str]) -> str:
    """Rows (eps, step), a column per method: "clean / PGD-50-10 (CO?)" in %."""
    rows: dict[tuple[float, float], dict[str, str]] = {}
    for r in runs:
        rows.setdefault((r["eps"], r["step"]), {})[r["label"]] = cell(r)
    body = [
        [f"{eps:g}", f"{step:g} eps", *(row.get(label, "-") for label in labels)] for (eps, step), row in rows.items()
    ]
    return markdown_table(["eps", "step", *labels], body)


def plot_sweep(runs: list[dict[str, Any]], labels: Sequence[str], path: Path) -> None:
    """Monitor PGD accuracy per epoch: a panel per (eps, step), a line per method, CO epochs marked with x."""
    from robustlab.plots import save_png, subplots

    eps_values = sorted({r["eps"] for r in runs})
    steps = sorted({r["step"] for r in runs})
    fig, axes = subplots(len(eps_values), len(steps), figsize=(5 * len(steps), 3 * len(eps_values)), squeeze=False)
    colours = dict(zip(labels, ["C0", "C1", "C2", "C3", "C4", "C5", "C6"]))
    for r in runs:
        ax = axes[eps_values.index(r["eps"])][steps.index(r["step"])]
        epochs = [e["epoch"] for e in r["epochs"]]
        ax.plot(epochs, [e["monitor_pgd_acc"] for e in r["epochs"]], "o-", ms=3, color=colours[r["label"]],
                label=r["label"])  # fmt: skip
        co = [(e["epoch"], e["monitor_pgd_acc"]) for e in r["epochs"] if e["co"]]
        if co:
            ax.plot(*zip(*co), "x", ms=10, mew=2, color="red")
        ax.set(title=f"eps {r['eps']:g}, step {r['step']:g} eps (x: CO)", xlabel="epoch", ylim=(0, 1))
    for ax in axes.flat:
        ax.set_ylabel("monitor PGD-10 acc")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=70)


def sweep_base(args: Any) -> dict[str, Any]:
    """The settings every run of the sweep shares."""
    return {"n_train": args.sweep_n, "epochs": args.sweep_epochs, "batch_size": 128, "lr": 3e-3, "seed": 0,
            "monitor_n": args.sweep_monitor_n, "eval_n": args.sweep_eval_n,
            "memory_format": "channels_last"}  # fmt: skip


def grid(args: Any, labels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """(eps, requested step, label, settings) of every grid run, in table order."""
    base = sweep_base(args)
    return [
        {"eps": eps, "step": step, "label": label, "settings": run_settings(label, eps, step, base)}
        for eps in args.sweep_eps
        for step in args.sweep_steps
        for label in labels or args.sweep_methods
    ]


def check(cells: list[dict[str, Any]], jobs: int, rollback_every: int = 0) -> None:
    """Every run's threat model and method built once, so a bad setting fails before hours of training."""
    from robustlab.defenses import make_method
    from robustlab.errors import RobustlabError
    from robustlab.threat import ThreatModel

    if jobs < 1 or not cells:
        raise RobustlabError(f"the sweep needs --jobs >= 1 and at least one run; got jobs {jobs}, {len(cells)} runs")
    if rollback_every < 0:
        raise RobustlabError(f"--rollback-every must be >= 0 steps (0: epochs only), got {rollback_every}")
    for s in (c["settings"] for c in cells):
        if min(s["n_train"], s["epochs"], s["eval_n"], s["monitor_n"]) < 1:
            raise RobustlabError("--sweep-n, --sweep-epochs, --sweep-eval-n and --sweep-monitor-n must be >= 1")
        make_method(s["method"], ThreatModel("linf", s["eps"]), s["step_eps"] * s["eps"], **s["options"])


def records(cells: list[dict[str, Any]], done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The grid cells with their run's record (a shared training says which step it ran with)."""
    return [
        {**c, **{k: v for k, v in d.items() if k != "settings"}, "settings": d["settings"]} for c, d in zip(cells, done)
    ]


def rollback_demo(
    cells: list[dict[str, Any]], base: dict, cache: RunCache, jobs: int, log: Callable[[str], None], every: int = 0
) -> dict:
    """The first grid setting where FGSM-RS collapsed (else eps 0.3, step 2 eps), trained again with
    ``on_co="rollback"`` and the monitor also checking every ``every`` steps (a collapse inside the first epoch
    still has a state before it to return to); both runs' final clean / PGD-50-10 accuracy."""
    collapsed = [c for c in cells if c["label"] == "fgsm-rs" and (cache.get(c["settings"]) or {}).get("co_flagged")]
    if collapsed:
        chosen, note = collapsed[0]["settings"], "the first grid setting where FGSM-RS was flagged"
    else:
        chosen, note = (
            run_settings("fgsm-rs", 0.3, 2.0, base),
            "FGSM-RS was never flagged in the grid: eps 0.3, step 2 eps",
        )
    rollback = {**chosen, "on_co": "rollback", **({"monitor_every": every} if every else {})}
    cont, back = run_all([chosen, rollback], cache, jobs, log)
    summary = lambda r: {k: r[k] for k in ("clean_accuracy", "pgd_50_10_accuracy", "co_epochs", "stop_reason",  # noqa: E731
                                           "best_epoch", "epochs", "train_seconds")}  # fmt: skip
    return {"setting": {"eps": chosen["eps"], "step_eps": chosen["step_eps"]}, "why": note,
            "monitor_every_steps": every, "continue": summary(cont), "rollback": summary(back)}  # fmt: skip


def run_sweep(args: Any, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The grid, its table and figure, and the rollback demo; written to ``args.sweep_out`` (and a PNG next to it)."""
    started = time.time()
    cache = RunCache(Path(args.cache))
    cells = grid(args)
    check(cells, args.jobs, args.rollback_every)
    runs = records(cells, run_all([c["settings"] for c in cells], cache, args.jobs, log))
    table = sweep_table(runs, args.sweep_methods)
    demo = None
    if not args.no_rollback_demo:
        demo = rollback_demo(cells, sweep_base(args), cache, args.jobs, log, args.rollback_every)
    out = Path(args.sweep_out)
    result = {
        "benchmark": "fast_at_sweep",
        "command": "python " + " ".join(sys.argv),
        "setting": {
            "eps": list(args.sweep_eps),
            "steps_eps": list(args.sweep_steps),
            "methods": list(args.sweep_methods),
            "n_train": args.sweep_n,
            "epochs": args.sweep_epochs,
            "eval_n": args.sweep_eval_n,
            "monitor_n": args.sweep_monitor_n,
            "model": "cnn (the zoo's SmallCNN), init seed 0",
            "optimizer": "adam, cyclic lr peak 3e-3, batch 128, no weight decay",
            "monitor": "COMonitor on_co=continue, each epoch (PGD-10 step eps/4 and FGSM on the monitor batch)",
            "evaluation": "final_evaluation: clean and PGD-50-10 (early stopping) on the first eval_n test images",
            "shared_runs": "fgsm and noiseaug project onto the eps-ball around their start: steps >= eps are "
            "one training (step_eps 1)",
        },  # fmt: skip
        "runs": runs,
        "table_markdown": table,
        "rollback_demo": demo,
        "wall_time_s": round(time.time() - started, 1),
        "environment": environment("python " + " ".join(sys.argv)),
    }
    write_json(out, result)
    plot_sweep(runs, args.sweep_methods, out.with_suffix(".png"))
    return result


def headline(result: dict[str, Any], file: str) -> dict[str, Any]:
    """The sweep's command, setting, table and rollback demo without the per-run records (those stay in ``file``),
    for ``fast_at.json``."""
    keys = ("command", "setting", "table_markdown", "rollback_demo", "wall_time_s")
    return {"file": file, "figure": str(Path(file).with_suffix(".png")), **{k: result[k] for k in keys}}


def summary(result: dict[str, Any]) -> str:
    """The table and the rollback demo's two runs, for the terminal."""
    lines = [result["table_markdown"]]
    demo = result["rollback_demo"]
    if demo:
        where = f"eps {demo['setting']['eps']}, step {demo['setting']['step_eps']} eps"
        if demo.get("monitor_every_steps"):
            where += f", the rollback run checked every {demo['monitor_every_steps']} steps"
        lines.append(f"rollback demo at {where} ({demo['why']}):")
        for mode in ("continue", "rollback"):
            r = demo[mode]
            lines.append(
                f"  {mode}: clean {100 * r['clean_accuracy']:.1f} %, PGD-50-10 {100 * r['pgd_50_10_accuracy']:.1f} %, "
                f"CO at epochs {r['co_epochs']}, {r['stop_reason'] or 'all epochs'}"
            )
    lines.append(f"wall time {result['wall_time_s']:.0f} s")
    return "\n".join(lines)
