"""What the training commands (train, ssl, deacl, pseudo-at, finetune) share: their arguments, with the defaults
of the kind's config (:mod:`robustlab.recipes`), and the one call: the arguments mapped onto the config, then
:func:`robustlab.training.run_training`, printing."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from robustlab.cli import common as c

TRUST_HELP = "load --checkpoint and --resume's last.pt with weights_only=False (only for files you trust)"
ENCODER_HELP = (  # a teacher's or an encoder's spec
    "a run folder or model.pt of robustlab ssl/deacl/finetune, zoo:NAME, torchvision:NAME@FILE or "
    "package.module:factory@FILE"
)


def add_training_args(p: argparse.ArgumentParser, config: type, eps: bool | None = None, unset: str = "") -> None:
    """The shared data, threat model (``eps``: True required, None the config's default or ``unset``, False none),
    optimisation and run-folder arguments of a training command; every argument of the command named as a field of
    ``config`` takes that field's default."""
    from robustlab.training.config import LR_SCHEDULES, OPTIMIZERS, TRAIN_MEMORY_FORMATS, TRAIN_PRECISIONS

    d = c.defaults_of(config)
    p.set_defaults(run=lambda args: run_command(config, args), **d)  # also for arguments added before and after
    c.add_data_args(p, split=False)
    if eps is not False:
        c.add_threat_args(p, True if eps else None if d.get("threat") is None else d["threat"].eps, unset=unset)
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=c.positive_int, help="epochs")
    o.add_argument("--batch-size", type=c.positive_int, help="per rank")
    o.add_argument("--optimizer", choices=OPTIMIZERS, help="the optimizer")
    o.add_argument("--lr", type=c.positive_float, help="peak/initial learning rate")
    o.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="the learning-rate schedule")
    o.add_argument("--momentum", type=c.nonnegative_float, help="SGD momentum / Adam beta1")
    o.add_argument("--weight-decay", type=c.nonnegative_float, help="weight decay")
    o.add_argument("--max-steps-per-epoch", type=c.positive_int, help="cut epochs short (smoke tests; default: off)")
    o.add_argument("--seed", type=int, help="seed of weights, data order, noise, augmentations, attacks")
    o.add_argument("--precision", choices=TRAIN_PRECISIONS, help="bf16 or fp16 autocast (fp16: CUDA; bf16: CUDA or a "
                   "bf16 CPU)")  # fmt: skip
    o.add_argument("--memory-format", choices=TRAIN_MEMORY_FORMATS, help="channels_last: faster convolutions on many "
                   "CPUs and GPUs")  # fmt: skip
    o.add_argument("--num-workers", type=c.nonnegative_int, help="data loader workers")
    o.add_argument("--threads", type=c.positive_int, help="CPU threads per process (default: torch's choice)")
    c.add_run_args(p, f"runs/{config.kind}", resume=True)
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (OUT/tensorboard)")


def add_model_args(p: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    """The model (teacher, encoder) a run starts from, ``--checkpoint`` and ``--trust-checkpoint``."""
    p.add_argument(flag, required=True, metavar="SPEC", help=help_text + " (SPEC@FILE: weights from FILE)")
    p.add_argument("--checkpoint", metavar="FILE", help=f"weights of {flag}: as {flag} SPEC@FILE (default: its own)")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


def add_student_args(group: argparse._ArgumentGroup, init_help: str) -> None:
    """``--augment`` and ``--init`` of a student trained against a frozen teacher (deacl, pseudo-at)."""
    from robustlab.ssl import AUGMENT_STRENGTHS, STUDENT_INITS

    group.add_argument("--augment", choices=AUGMENT_STRENGTHS, help="augmentation")
    group.add_argument("--init", choices=STUDENT_INITS, help=f"student initialisation: {init_help} or random (better "
                       "on short budgets: see the README's SSL section)")  # fmt: skip


def run_command(config: type, args: argparse.Namespace) -> int:
    """A training subcommand's one library call (:func:`robustlab.training.run_training`) and its printing."""
    from robustlab.io import markdown_table
    from robustlab.training.run import run_training

    if args.threads:
        torch.set_num_threads(args.threads)
    run = c.config_from(config, args, progress=not args.no_progress)
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
    parts = [f"{k} {s[k]:.4f}" for k in ("loss", *keys) if k in s] + ["CATASTROPHIC OVERFITTING"] * bool(s.get("co"))
    print(f"epoch {s['epoch']:>3}/{epochs}  {s['epoch_seconds']:.1f}s  " + "  ".join(parts), flush=True)
