"""What the training commands (train, ssl, deacl, pseudo-at, finetune) share: their arguments, with the defaults
of the kind's config (:mod:`robustlab.recipes`), and the one call: the arguments mapped onto the config, then
:func:`robustlab.training.run_training`, printing."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import torch

from robustlab.cli import common as c

TRUST_HELP = "load --checkpoint and --resume's last.pt with weights_only=False (only for files you trust)"


def defaults_of(config: type) -> dict[str, Any]:
    """The defaults of a config class's fields."""
    return {f.name: f.default for f in fields(config) if f.default is not MISSING}


def add_training_args(p: argparse.ArgumentParser, config: type, eps: bool | None) -> None:
    """Data, threat model (``eps``: True required, None optional or the config's default, False none),
    optimisation and run-folder arguments of a training command, with ``config``'s defaults."""
    from robustlab.training.config import LR_SCHEDULES, OPTIMIZERS, TRAIN_MEMORY_FORMATS, TRAIN_PRECISIONS

    d = defaults_of(config)
    p.add_argument("--dataset", required=True, metavar="NAME", help="fashion-mnist, mnist, cifar10, ...")
    p.add_argument("--n", type=c.positive_int, help="train on the first N training items (default: all)")
    p.add_argument("--data-root", metavar="DIR", help=c.DATA_ROOT_HELP)
    p.add_argument("--no-download", dest="download", action="store_false", help="never download missing data")
    p.add_argument("--image-size", type=c.positive_int, metavar="PX", help=c.IMAGE_SIZE_HELP)
    p.add_argument("--channels", type=int, choices=[1, 3], help="imagefolder: 1 grey or 3 RGB (default: 3)")
    if eps is not False:
        g = p.add_argument_group("threat model")
        g.add_argument("--norm", default="linf", help="linf or l2 (default: linf)")
        threat = d.get("threat")
        default = None if threat is None else threat.eps
        said = "required" if eps else f"default: {default:.4g}" if default else "default: none; needed to evaluate"
        g.add_argument("--eps", required=bool(eps), default=default, type=c.eps_value,
                       help=f"radius of the eps-ball, e.g. 0.1 or 8/255 ({said})")  # fmt: skip
        g.add_argument(
            "--bounds", default="0,1", type=c.bounds_value, metavar="LO,HI", help="input range (default: 0,1)"
        )
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=c.positive_int, default=d["epochs"], help=f"epochs (default: {d['epochs']})")
    o.add_argument(
        "--batch-size", type=c.positive_int, default=d["batch_size"], help=f"per rank (default: {d['batch_size']})"
    )
    o.add_argument("--optimizer", choices=OPTIMIZERS, default=d["optimizer"], help=f"(default: {d['optimizer']})")
    o.add_argument(
        "--lr", type=c.positive_float, default=d["lr"], help=f"peak/initial learning rate (default: {d['lr']})"
    )
    o.add_argument(
        "--lr-schedule", choices=LR_SCHEDULES, default=d["lr_schedule"], help=f"(default: {d['lr_schedule']})"
    )
    o.add_argument(
        "--momentum", type=c.nonnegative_float, default=d["momentum"], help="SGD momentum / Adam beta1, in [0, 1)"
    )
    o.add_argument("--weight-decay", type=c.nonnegative_float, default=d["weight_decay"],
                   help=f"(default: {d['weight_decay']})")  # fmt: skip
    o.add_argument(
        "--max-steps-per-epoch", type=c.positive_int, help="cut epochs short, for smoke tests (default: off)"
    )
    o.add_argument("--seed", type=int, default=0, help="seed of weights, data order, noise, augmentations, attacks")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=TRAIN_PRECISIONS, default="fp32",
                   help="bf16 or fp16 autocast (fp16: CUDA; bf16: CUDA or a bf16 CPU; default: fp32)")  # fmt: skip
    p.add_argument("--memory-format", choices=TRAIN_MEMORY_FORMATS, default="contiguous",
                   help="channels_last: faster convolutions on many CPUs and GPUs (default: contiguous)")  # fmt: skip
    p.add_argument("--num-workers", type=c.nonnegative_int, default=0, help="data loader workers (default: 0)")
    p.add_argument("--threads", type=c.positive_int, help="CPU threads per process (default: torch's choice)")
    out = f"runs/{config.kind}"
    p.add_argument("--out", default=out, metavar="DIR", help=f"run folder (default: {out})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (OUT/tensorboard)")
    p.set_defaults(run=lambda args: run_command(config, args))


def add_model_args(p: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    """The model (teacher, encoder) a run starts from, ``--checkpoint`` and ``--trust-checkpoint``."""
    p.add_argument(flag, required=True, metavar="SPEC", help=help_text + " (SPEC@FILE: weights from FILE)")
    p.add_argument("--checkpoint", metavar="FILE", help=f"weights of {flag}: as {flag} SPEC@FILE (default: its own)")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


def add_student_args(group: argparse._ArgumentGroup, init_help: str) -> None:
    """``--augment`` and ``--init`` of a student trained against a frozen teacher (deacl, pseudo-at)."""
    from robustlab.ssl import AUGMENT_STRENGTHS, STUDENT_INITS

    group.add_argument("--augment", choices=AUGMENT_STRENGTHS, default="weak", help="augmentation (default: weak)")
    group.add_argument(
        "--init", choices=STUDENT_INITS, default="teacher",
        help=f"student initialisation: {init_help} or random (better on short budgets: see the README's SSL section)",
    )  # fmt: skip


def config_from(config: type, args: argparse.Namespace) -> Any:
    """The arguments mapped onto the config: each field from the argument of its name, the threat model from
    ``--norm/--eps/--bounds``."""
    from robustlab.threat import ThreatModel

    names = {f.name for f in fields(config)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "eps" in vars(args):
        values["threat"] = ThreatModel(args.norm, args.eps, args.bounds) if args.eps is not None else None
    return config(**values, progress=not args.no_progress)


def run_command(config: type, args: argparse.Namespace) -> int:
    """A training subcommand's one library call (:func:`robustlab.training.run_training`) and its printing."""
    from robustlab.io import markdown_table
    from robustlab.training.run import run_training

    if args.threads:
        torch.set_num_threads(args.threads)
    run = config_from(config, args)
    report = run_training(
        run, args.out, resume=args.resume, overwrite=args.overwrite, device=args.device,
        command_line=args.command_line, on_start=lambda setup: print(setup.banner, flush=True),
        on_epoch=lambda stats: _print_epoch(stats, args.epochs, config.epoch_keys),
    )  # fmt: skip
    if report is not None:  # rank 0
        print(markdown_table(["metric", "value"], report.summary_rows()))
        print(f"report: {Path(args.out) / 'report.json'}; model: {Path(args.out) / 'model.pt'}", flush=True)
    return 0


def _print_epoch(s: dict, epochs: int, keys: tuple[str, ...]) -> None:
    parts = [f"{k} {s[k]:.4f}" for k in ("loss", *keys) if k in s] + (
        ["CATASTROPHIC OVERFITTING"] if s.get("co") else []
    )
    print(f"epoch {s['epoch']:>3}/{epochs}  {s['epoch_seconds']:.1f}s  " + "  ".join(parts), flush=True)
