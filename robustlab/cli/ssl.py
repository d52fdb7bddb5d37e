"""``robustlab ssl``: stage 1, a self-supervised teacher encoder (SimCLR or SimCo) with a kNN monitor.

Also holds the pieces the other self-supervised subcommands (``deacl``, ``pseudo-at``, ``finetune``) share:
the optimisation arguments, the run setup (data, resume guard, encoder loading) and the report; the device
and DDP wrapper is ``robustlab.cli.common.run_distributed``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.cli.common import (
    bounds_value,
    distributed,
    eps_value,
    positive_float,
    positive_int,
    train_config,
)
from robustlab.data import first_n, load_dataset
from robustlab.defenses.loop import LR_SCHEDULES, OPTIMIZERS, TrainConfig, TrainResult, train
from robustlab.defenses.report import evaluation_rows, write_report
from robustlab.io import environment, markdown_table
from robustlab.models import ARCHITECTURES, build_model, seeded_weights
from robustlab.threat import ThreatModel

TRUST_HELP = "load --checkpoint and --resume's last.pt with weights_only=False (only for files you trust)"
EXAMPLE = "robustlab ssl --method simclr --model cnn --dataset fashion-mnist --n 10000 --epochs 5 --out runs/ssl"


# ---------------------------------------------------------------------------------------------- shared pieces


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, metavar="NAME", help="fashion-mnist, mnist, cifar10, ...")
    p.add_argument("--n", type=positive_int, help="train on the first N training items (default: all)")
    p.add_argument("--data-root", metavar="DIR", help="where the dataset lives (searched first)")
    p.add_argument(
        "--no-download", dest="download", action="store_false", help="never download: fail if the data is not on disk"
    )


def add_threat_args(p: argparse.ArgumentParser, required: bool, default_eps: str | None = None) -> None:
    g = p.add_argument_group("threat model")
    g.add_argument("--norm", default="linf", help="linf or l2 (default: linf)")
    g.add_argument(
        "--eps",
        required=required and default_eps is None,
        default=default_eps,
        type=eps_value,
        help="radius of the eps-ball, e.g. 0.1 or 8/255" + (f" (default: {default_eps})" if default_eps else ""),
    )
    g.add_argument("--bounds", default="0,1", type=bounds_value, metavar="LO,HI", help="input range (default: 0,1)")


def add_optim_args(
    p: argparse.ArgumentParser, epochs: int, batch_size: int, optimizer: str, lr: float, schedule: str, wd: float
) -> None:
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=positive_int, default=epochs, help=f"epochs (default: {epochs})")
    o.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"per rank (default: {batch_size})")
    o.add_argument("--optimizer", choices=OPTIMIZERS, default=optimizer, help=f"(default: {optimizer})")
    o.add_argument("--lr", type=positive_float, default=lr, help=f"peak/initial learning rate (default: {lr})")
    o.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=schedule, help=f"(default: {schedule})")
    o.add_argument("--momentum", type=float, default=0.9, help="SGD momentum / Adam beta1 (default: 0.9)")
    o.add_argument("--weight-decay", type=float, default=wd, help=f"(default: {wd})")
    o.add_argument("--max-steps-per-epoch", type=positive_int, help="cut epochs short (smoke tests)")
    o.add_argument("--seed", type=int, default=0, help="seed of weights, data order, augmentations, attacks")


def add_run_args(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--out", default=out_default, metavar="DIR", help=f"run folder (default: {out_default})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_student_args(group: argparse._ArgumentGroup, init_help: str) -> None:
    """``--augment`` and ``--init`` of a student trained against a frozen teacher (deacl, pseudo-at)."""
    from robustlab.defenses.deacl import STUDENT_INITS
    from robustlab.defenses.ssl import AUGMENT_STRENGTHS

    group.add_argument("--augment", choices=AUGMENT_STRENGTHS, default="weak", help="augmentation (default: weak)")
    group.add_argument(
        "--init",
        choices=STUDENT_INITS,
        default="teacher",
        help=f"student initialisation: {init_help} or random (better on short budgets: see the README's SSL section)",
    )


def add_teacher_args(p: argparse.ArgumentParser, flag: str = "--teacher", what: str = "teacher") -> None:
    p.add_argument(
        flag,
        required=True,
        metavar="SPEC",
        help=f"the {what}: a run folder or model.pt of robustlab ssl/deacl/finetune, zoo:NAME, torchvision:NAME "
        "(+ --checkpoint) or package.module:factory (+ --checkpoint)",
    )
    p.add_argument("--checkpoint", metavar="FILE", help=f"weights of a torchvision:/module:factory {what}")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


def threat_of(args: argparse.Namespace) -> ThreatModel | None:
    return ThreatModel(args.norm, args.eps, args.bounds) if getattr(args, "eps", None) is not None else None


def start(args: argparse.Namespace) -> tuple[float, Path, ThreatModel | None, Any]:
    """What every training subcommand begins with: its start time, checked output folder, threat model (None
    without ``--eps``) and training set."""
    return time.time(), check_out(args), threat_of(args), train_set_of(args)


def check_out(args: argparse.Namespace) -> Path:
    """The run folder (locked and checked by :func:`robustlab.cli.common.run_distributed`)."""
    return Path(args.out)


def train_set_of(args: argparse.Namespace):
    return first_n(load_dataset(args.dataset, "train", args.data_root, args.download), args.n)


def load_encoder(args: argparse.Namespace, spec: str, device: torch.device) -> tuple[nn.Module, str | None]:
    """The teacher/encoder classifier named by ``spec`` (run folder, zoo, torchvision, module:factory) and its arch."""
    from robustlab.defenses.ssl import model_arch, resolve_model

    net = resolve_model(spec, args.checkpoint, args.trust_checkpoint, device)
    return net, model_arch(spec, net)[0]


def fit(
    args: argparse.Namespace,
    model: nn.Module,
    method: Any,
    train_set: Any,
    config: TrainConfig,
    out: Path,
    device: torch.device,
    rank: int,
    keys: tuple[str, ...],
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """The one training loop with the subcommands' shared options (resume, device, a line per epoch of ``keys``)."""
    return train(
        model, method, train_set, config, out, resume=args.resume, callbacks=callbacks or [], device=device,
        on_epoch=epoch_printer(rank, config.epochs, keys), trust_checkpoint=args.trust_checkpoint,
    )  # fmt: skip


def last_epoch_rows(result: TrainResult, keys: tuple[str, ...]) -> list[list[str]]:
    """``[[key, value]]`` of the last epoch's ``keys``, for the summary table."""
    last = result.history[-1] if result.history else {}
    return [[k, f"{last[k]:.4f}"] for k in keys if k in last]


def epoch_printer(rank: int, epochs: int, keys: tuple[str, ...]) -> Callable[[dict], None]:
    def on_epoch(s: dict) -> None:
        if rank == 0:
            parts = [f"{k} {s[k]:.4f}" for k in ("loss", *keys) if k in s]
            print(f"epoch {s['epoch']:>3}/{epochs}  {s['epoch_seconds']:.1f}s  " + "  ".join(parts), flush=True)

    return on_epoch


def finish(
    args: argparse.Namespace,
    out: Path,
    method: dict[str, Any],
    result: TrainResult,
    config: TrainConfig,
    started: float,
    evaluation: dict[str, Any] | None = None,
    rows: list[list[Any]] | None = None,
    **extra: Any,
) -> None:
    """Write ``report.json`` and ``report.md`` and print the summary table."""

    report = {
        "method": method,
        "dataset": args.dataset,
        "config": asdict(config),
        "evaluation": evaluation,
        "epochs_done": result.epochs_done,
        "stop_reason": result.stop_reason,
        "train_seconds": result.train_seconds,
        "history": result.history,
        **extra,
        "args": {k: v for k, v in vars(args).items() if k != "run"},
        "wall_time_s": round(time.time() - started, 3),
        "environment": environment(args.command_line),
    }
    write_report(out, report)
    table = [["training time", f"{result.train_seconds:.1f} s ({result.epochs_done} epochs)"], *(rows or [])]
    table += evaluation_rows(evaluation)
    print(markdown_table(["metric", "value"], table))
    print(f"report: {out / 'report.json'}; model: {out / 'model.pt'}")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------- ssl


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ssl",
        help="stage 1: train a self-supervised teacher encoder (SimCLR or SimCo)",
        description="Contrastive self-supervised training of an encoder + projector (labels unused; a kNN "
        "monitor on a small labelled split reports feature quality each epoch). Writes OUT/model.pt (the "
        "encoder's classifier, for robustlab deacl/pseudo-at/finetune), report.json/md and resumable "
        f"checkpoints; trains with DDP under torchrun, gathering negatives across ranks. Example: {EXAMPLE}",
    )
    p.add_argument("--method", choices=["simclr", "simco"], default="simclr", help="(default: simclr)")
    p.add_argument(
        "--model",
        required=True,
        metavar="ARCH|SPEC",
        help=f"a fresh architecture ({', '.join(ARCHITECTURES)}) or an encoder to start from (zoo:NAME, "
        "torchvision:NAME, package.module:factory + --checkpoint, or a robustlab run folder)",
    )
    p.add_argument("--checkpoint", metavar="FILE", help="weights of a torchvision:/module:factory model")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    add_data_args(p)
    s = p.add_argument_group("self-supervised method")
    s.add_argument("--temperature", type=positive_float, default=0.2, help="InfoNCE / SimCo tau_alpha (default: 0.2)")
    s.add_argument("--tau-beta", type=positive_float, default=1.0, help="SimCo's second temperature (default: 1.0)")
    s.add_argument("--proj-hidden", type=positive_int, default=512, help="projector hidden width (default: 512)")
    s.add_argument("--proj-dim", type=positive_int, default=128, help="projection dimension (default: 128)")
    s.add_argument("--knn-n", type=int, default=2000, help="labelled train items of the kNN monitor (0: off)")
    add_optim_args(p, epochs=20, batch_size=256, optimizer="adam", lr=1e-3, schedule="cosine", wd=1e-5)
    add_run_args(p, "runs/ssl")
    p.set_defaults(run=distributed(_run))


def build_or_load(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, str | None]:
    """A fresh architecture (seeded) or an existing classifier to start from; returns it and its arch."""
    if args.model in ARCHITECTURES:
        with seeded_weights(args.seed):  # seeded weights without touching the caller's global RNG
            return build_model(args.model, args.dataset).to(device), args.model
    return load_encoder(args, args.model, device)


def _run(args: argparse.Namespace, device: torch.device, rank: int) -> int:
    from robustlab.defenses.ssl import ContrastiveSSL, KNNMonitor, SSLModel, save_classifier

    started, out, _, train_set = start(args)
    net, arch = build_or_load(args, device)
    with seeded_weights(args.seed):
        model = SSLModel(net, args.proj_hidden, args.proj_dim).to(device)
    method = ContrastiveSSL(args.method, args.temperature, args.tau_beta, seed=args.seed)
    callbacks = []
    if args.knn_n > 0:
        full_train = load_dataset(args.dataset, "train", args.data_root, args.download)
        test = load_dataset(args.dataset, "test", args.data_root, args.download)
        take = lambda ds, n: tuple(torch.utils.data.default_collate([ds[i] for i in range(min(n, len(ds)))]))  # noqa: E731
        callbacks.append(KNNMonitor(take(full_train, args.knn_n), take(test, max(args.knn_n // 4, 100))))
    config = train_config(args, best_metric=None)
    if rank == 0:
        print(
            f"{args.method} on {args.dataset} ({len(train_set)} images, labels unused), model {args.model}", flush=True
        )
    result = fit(args, model, method, train_set, config, out, device, rank, ("positive_cos", "knn_accuracy"), callbacks)
    if rank != 0:
        return 0
    save_classifier(out / "model.pt", net, arch, args.dataset, stage="ssl", method=args.method)
    last = result.history[-1] if result.history else {}
    rows = [["kNN accuracy", f"{100 * last['knn_accuracy']:.2f} %"]] if "knn_accuracy" in last else []
    method_info = {
        "method": args.method,
        "temperature": args.temperature,
        "tau_beta": args.tau_beta if args.method == "simco" else None,
        "projector": [args.proj_hidden, args.proj_dim],
        "model": args.model,
        "arch": arch,
    }
    finish(args, out, method_info, result, config, started, rows=rows, train_samples=len(train_set))
    return 0
