"""Arguments and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch

from robustlab.errors import RobustlabError
from robustlab.threat import parse_eps


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def eps_value(text: str) -> float:
    try:
        return parse_eps(text)
    except RobustlabError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_float(text: str) -> float:
    try:
        value = float(eps_value(text))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def topk_list(text: str) -> list[int]:
    """``--topk 1,2,3,5`` -> ``[1, 2, 3, 5]`` (k >= 1; the model's class count bounds it later)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"give k >= 1, e.g. 1,2,3,5; got {text!r}")
    return values


def add_model_args(parser: argparse.ArgumentParser, flag: str = "--model") -> None:
    parser.add_argument(
        flag,
        required=True,
        metavar="SPEC",
        help="zoo:NAME, torchvision:NAME, package.module:factory, or a TorchScript file",
    )
    parser.add_argument("--checkpoint", metavar="FILE", help="weights for torchvision:/module:factory models")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load the checkpoint with weights_only=False (only for files you trust)",
    )


def add_data_args(parser: argparse.ArgumentParser, default_n: int | None = None) -> None:
    parser.add_argument(
        "--dataset",
        required=True,
        metavar="NAME",
        help="fashion-mnist, mnist, cifar10, cifar100, svhn or imagefolder:PATH",
    )
    parser.add_argument("--split", default="test", choices=["train", "test"], help="dataset split (default: test)")
    parser.add_argument("--n", type=int, default=default_n, help="use the first N items of the split (default: all)")
    parser.add_argument("--data-root", metavar="DIR", help="where the dataset lives (searched first)")
    parser.add_argument(
        "--no-download",
        dest="download",
        action="store_false",
        help="never download: fail if the dataset is not on disk (default: download only what is missing)",
    )


def add_threat_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--norm", default="linf", help="linf or l2 (default: linf)")
    parser.add_argument("--eps", required=True, type=eps_value, help="radius of the eps-ball, e.g. 0.1 or 8/255")
    parser.add_argument(
        "--bounds", default="0,1", type=bounds_value, metavar="LO,HI", help="valid input range (default: 0,1)"
    )


def bounds_value(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO,HI (e.g. 0,1)") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"bounds need LO < HI, got {text!r}")
    return lo, hi


def add_run_args(parser: argparse.ArgumentParser, out_default: str) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=256, help="samples per batch (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the attacks' own random generators")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--out", default=out_default, metavar="DIR", help=f"report folder (default: {out_default})")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RobustlabError(f"--device {name} asked for, but no CUDA device is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise RobustlabError(f"unknown device {name!r}; use cpu or cuda") from None


def train_config(args: argparse.Namespace, best_metric: str | None = None):  # -> TrainConfig
    """The training loop's configuration from the shared optimisation and run arguments of the training CLIs."""
    from robustlab.defenses.loop import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        seed=args.seed,
        amp=getattr(args, "amp", False),
        num_workers=getattr(args, "num_workers", 0),
        progress=not args.no_progress,
        best_metric=best_metric,
        max_steps_per_epoch=getattr(args, "max_steps_per_epoch", None),
    )


# Arguments that change neither the trained weights nor their meaning: a resumed run may differ in them.
RESUME_NEUTRAL = {
    "run", "command", "command_line", "verbose", "out", "resume", "overwrite", "no_progress", "device", "threads",
    "num_workers", "trust_checkpoint", "export", "no_eval", "eval_n", "autoattack", "no_plots", "resume_neutral",
}  # fmt: skip


def training_fingerprint(args: argparse.Namespace, neutral: set[str] = RESUME_NEUTRAL) -> dict:
    """Every argument of a training command that changes its result (what ``--resume`` must match), with the
    content digest of the files it starts from."""
    from robustlab.runs import file_digest

    keys = {k: v for k, v in sorted(vars(args).items()) if k not in neutral}
    for name in ("model", "checkpoint", "teacher", "encoder"):
        value = keys.get(name)
        if isinstance(value, str) and os.path.isfile(value):
            keys[f"{name}_sha256"] = file_digest(value)
        elif isinstance(value, str) and os.path.isfile(os.path.join(value, "model.pt")):
            keys[f"{name}_sha256"] = file_digest(os.path.join(value, "model.pt"))
    return keys


def run_distributed(args: argparse.Namespace, body: Callable[[argparse.Namespace, torch.device, int], int]) -> int:
    """Resolve the device, join torchrun's process group if there is one, lock and check ``--out`` (one run per
    folder; ``--resume`` only with the same settings), run ``body(args, device, rank)``."""
    from robustlab.distributed import barrier, finish, init_distributed, shard_device
    from robustlab.runs import RunFolder

    shard = init_distributed(resolve_device(args.device))
    try:
        neutral = RESUME_NEUTRAL | set(getattr(args, "resume_neutral", ()))
        folder = RunFolder(
            args.out, args.command, training_fingerprint(args, neutral), resume=args.resume,
            overwrite=args.overwrite, is_main=shard.is_main, barrier=lambda: barrier(shard),
        )  # fmt: skip
        with folder:
            return body(args, shard_device(resolve_device(args.device), shard), shard.rank)
    finally:
        finish(shard)


def distributed(body: Callable[[argparse.Namespace, torch.device, int], int]) -> Callable[[argparse.Namespace], int]:
    """A training subcommand's ``run``: ``body(args, device, rank)`` under :func:`run_distributed`."""
    return lambda args: run_distributed(args, body)
