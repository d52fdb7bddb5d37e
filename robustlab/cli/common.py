"""Arguments and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from robustlab.errors import RobustlabError
from robustlab.threat import parse_eps
from robustlab.training.run import resolve_device  # noqa: F401 (the subcommands import it from here)

if TYPE_CHECKING:
    from robustlab.threat import ThreatModel
    from robustlab.training.config import TrainConfig
    from robustlab.training.run import TrainingSetup


def _whole(text: str, minimum: int) -> int:
    """``text`` as a whole number >= ``minimum``, or the argparse error naming it."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    return _whole(text, 1)


def eps_value(text: str) -> float:
    try:
        return parse_eps(text)
    except RobustlabError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_float(text: str) -> float:
    """A finite number > 0 (fractions such as 8/255 allowed)."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """A whole number >= 0 (0 usually means off)."""
    return _whole(text, 0)


def _number(text: str) -> float:
    """``text`` as a finite float (``8/255`` allowed), or the argparse error naming it."""
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
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


MODEL_HELP = (
    "a robustlab run folder or its model.pt (what robustlab train/ssl/deacl/pseudo-at/finetune write), zoo:NAME, "
    "torchvision:NAME, robustbench:NAME, timm:NAME, package.module:factory (imported from the current folder), or "
    "a TorchScript file; SPEC@FILE loads FILE's weights into it"
)


def add_model_args(parser: argparse.ArgumentParser, flag: str = "--model") -> None:
    parser.add_argument(flag, required=True, metavar="SPEC", help=MODEL_HELP)
    parser.add_argument(
        "--checkpoint", metavar="FILE",
        help=f"weights (a state dict) of {flag}: the same as {flag} SPEC@FILE (default: the spec's own)",
    )  # fmt: skip
    parser.add_argument(
        "--num-classes", type=positive_int, metavar="C",
        help="outputs of a torchvision:/module:factory model (default: the factory's; torchvision: 1000)",
    )  # fmt: skip
    norm = "(default: none; torchvision: ImageNet's)"
    parser.add_argument("--mean", type=float_list, metavar="M,M,M", help=f"normalisation mean per channel {norm}")
    parser.add_argument("--std", type=float_list, metavar="S,S,S", help=f"normalisation std per channel {norm}")
    parser.add_argument(
        "--model-dir", dest="checkpoint", metavar="DIR", help="robustbench: models folder (default: ./models)"
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load the checkpoint with weights_only=False (only for files you trust)",
    )


def float_list(text: str) -> tuple[float, ...]:
    """``0.5,0.5,0.5`` -> ``(0.5, 0.5, 0.5)`` (finite numbers)."""
    values = tuple(_number(v) for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers")
    return values


def model_source(args: argparse.Namespace) -> Any:
    """The :class:`robustlab.eval.ModelSource` of ``--model``, ``--checkpoint``, ``--num-classes``, ``--mean/--std``."""
    from robustlab.eval import ModelSource
    from robustlab.models import model_file_header

    if (args.mean is None) != (args.std is None) or (args.mean and len(args.mean) != len(args.std)):
        raise RobustlabError("give --mean and --std together, one value per channel each")
    stage = ((model_file_header(args.model) or {}) if args.checkpoint is None else {}).get("stage")
    if stage in ("ssl", "deacl"):  # labels never trained its head: its accuracy is chance, not robustness
        print(f"warning: {args.model} is a robustlab {stage} encoder whose linear head never saw a label; fine-tune it "
              f"first: robustlab finetune --encoder {args.model} --protocol slf", file=sys.stderr)  # fmt: skip
    return ModelSource(args.model, args.checkpoint, args.trust_checkpoint, args.num_classes, args.mean, args.std)


def data_source(args: argparse.Namespace, model: str | None = None) -> Any:
    """The :class:`robustlab.eval.DataSource` of the data arguments; an image folder takes its image size and
    channels from ``--image-size/--channels``, else from the robustlab model file ``model`` (if it says)."""
    from robustlab.eval import DataSource
    from robustlab.models import model_file_header

    size, channels = args.image_size, args.channels
    header = model_file_header(model) if model and args.dataset.startswith("imagefolder") else None
    shape = (header or {}).get("input_shape")
    if shape and size is None and channels is None:
        channels, size = shape[0], shape[-1]
    return DataSource(args.dataset, args.split, args.n, args.data_root, args.download, size, channels)


DATA_ROOT_HELP = "where the dataset lives, searched first (default: the usual places, then a download)"
IMAGE_SIZE_HELP = "imagefolder: resize to PX, centre-crop PX x PX (default: a model file's size, else 256, crop 224)"


def add_data_args(parser: argparse.ArgumentParser, default_n: int | None = None) -> None:
    parser.add_argument(
        "--dataset",
        required=True,
        metavar="NAME",
        help="fashion-mnist, mnist, cifar10, cifar100, svhn or imagefolder:PATH",
    )
    parser.add_argument("--split", default="test", choices=["train", "test"], help="dataset split (default: test)")
    parser.add_argument("--n", type=int, default=default_n, help="use the first N items of the split (default: all)")
    parser.add_argument("--data-root", metavar="DIR", help=DATA_ROOT_HELP)
    parser.add_argument("--image-size", type=positive_int, metavar="PX", help=IMAGE_SIZE_HELP)
    parser.add_argument("--channels", type=int, choices=[1, 3], help="imagefolder: 1 grey or 3 RGB (default: 3)")
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
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise argparse.ArgumentTypeError(f"bounds need finite LO < HI, got {text!r}")
    return lo, hi


def add_run_args(parser: argparse.ArgumentParser, out_default: str) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=256, help="samples per batch (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the attacks' own random generators")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--out", default=out_default, metavar="DIR", help=f"report folder (default: {out_default})")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


# ---------------------------------------------------------------------------- the training commands' shared parts

TRUST_HELP = "load --checkpoint and --resume's last.pt with weights_only=False (only for files you trust)"
# Arguments that change neither the trained weights nor their meaning: a resumed run may differ in them.
RESUME_NEUTRAL = {
    "run", "command", "command_line", "verbose", "out", "resume", "overwrite", "no_progress", "device", "threads",
    "num_workers", "trust_checkpoint", "export", "no_eval", "eval_n", "autoattack", "no_plots", "resume_neutral",
    "tensorboard",
}  # fmt: skip


# epochs, batch size, optimizer, learning rate, schedule, weight decay: each training command's defaults
OPTIM_DEFAULTS = {
    "train": (10, 128, "sgd", 0.1, "cyclic", 5e-4), "ssl": (20, 256, "adam", 1e-3, "cosine", 1e-5),
    "deacl": (100, 256, "sgd", 0.5, "cosine", 5e-4), "pseudo-at": (10, 256, "sgd", 0.1, "cosine", 5e-4),
    "finetune": (10, 256, "sgd", 0.1, "cosine", 5e-4),
}  # fmt: skip


def add_training_args(p: argparse.ArgumentParser, command: str, eps: bool | str | None) -> None:
    """Data, threat model (``eps``: True required, a string its default, None optional, False none), optimisation
    and run-folder arguments of a training command."""
    from robustlab.training.config import LR_SCHEDULES, OPTIMIZERS, TRAIN_MEMORY_FORMATS, TRAIN_PRECISIONS

    p.add_argument("--dataset", required=True, metavar="NAME", help="fashion-mnist, mnist, cifar10, ...")
    p.add_argument("--n", type=positive_int, help="train on the first N training items (default: all)")
    p.add_argument("--data-root", metavar="DIR", help=DATA_ROOT_HELP)
    p.add_argument("--no-download", dest="download", action="store_false", help="never download missing data")
    p.add_argument("--image-size", type=positive_int, metavar="PX", help=IMAGE_SIZE_HELP)
    p.add_argument("--channels", type=int, choices=[1, 3], help="imagefolder: 1 grey or 3 RGB (default: 3)")
    if eps is not False:
        g = p.add_argument_group("threat model")
        g.add_argument("--norm", default="linf", help="linf or l2 (default: linf)")
        default = eps if isinstance(eps, str) else None
        said = "default: none; needed to train adversarially or evaluate"
        said = "required" if eps is True else f"default: {default}" if default else said
        g.add_argument("--eps", required=eps is True, default=default, type=eps_value,
                       help=f"radius of the eps-ball, e.g. 0.1 or 8/255 ({said})")  # fmt: skip
        g.add_argument("--bounds", default="0,1", type=bounds_value, metavar="LO,HI", help="input range (default: 0,1)")
    epochs, batch_size, optimizer, lr, schedule, wd = OPTIM_DEFAULTS[command]
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=positive_int, default=epochs, help=f"epochs (default: {epochs})")
    o.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"per rank (default: {batch_size})")
    o.add_argument("--optimizer", choices=OPTIMIZERS, default=optimizer, help=f"(default: {optimizer})")
    o.add_argument("--lr", type=positive_float, default=lr, help=f"peak/initial learning rate (default: {lr})")
    o.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=schedule, help=f"(default: {schedule})")
    o.add_argument("--momentum", type=nonnegative_float, default=0.9, help="SGD momentum / Adam beta1, in [0, 1)")
    o.add_argument("--weight-decay", type=nonnegative_float, default=wd, help=f"(default: {wd})")
    o.add_argument("--max-steps-per-epoch", type=positive_int, help="cut epochs short, for smoke tests (default: off)")
    o.add_argument("--seed", type=int, default=0, help="seed of weights, data order, noise, augmentations, attacks")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=TRAIN_PRECISIONS, default="fp32",
                   help="bf16 or fp16 autocast (fp16: CUDA; bf16: CUDA or a bf16 CPU; default: fp32)")  # fmt: skip
    p.add_argument("--memory-format", choices=TRAIN_MEMORY_FORMATS, default="contiguous",
                   help="channels_last: faster convolutions on many CPUs and GPUs (default: contiguous)")  # fmt: skip
    p.add_argument("--out", default=f"runs/{command}", metavar="DIR", help=f"run folder (default: runs/{command})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (OUT/tensorboard)")


def add_step_size_arg(group: argparse._ArgumentGroup, help_text: str) -> None:
    """``--step-size`` (with ``--alpha``, its old name, as a hidden alias)."""
    group.add_argument("--step-size", dest="step_size", type=positive_float, help=help_text)
    group.add_argument("--alpha", dest="step_size", type=positive_float, help=argparse.SUPPRESS)


def add_teacher_args(p: argparse.ArgumentParser, flag: str = "--teacher", what: str = "teacher") -> None:
    p.add_argument(
        flag, required=True, metavar="SPEC",
        help=f"the {what}: a run folder or model.pt of robustlab ssl/deacl/finetune, zoo:NAME, torchvision:NAME@FILE "
        "or package.module:factory@FILE (SPEC@FILE: weights from FILE)",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint", metavar="FILE", help=f"weights of the {what}: as {flag} SPEC@FILE (default: the spec's own)"
    )
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


def add_student_args(group: argparse._ArgumentGroup, init_help: str) -> None:
    """``--augment`` and ``--init`` of a student trained against a frozen teacher (deacl, pseudo-at)."""
    from robustlab.ssl import AUGMENT_STRENGTHS, STUDENT_INITS

    group.add_argument("--augment", choices=AUGMENT_STRENGTHS, default="weak", help="augmentation (default: weak)")
    group.add_argument(
        "--init", choices=STUDENT_INITS, default="teacher",
        help=f"student initialisation: {init_help} or random (better on short budgets: see the README's SSL section)",
    )  # fmt: skip


def train_config(args: argparse.Namespace, best_metric: str | None = None) -> TrainConfig:
    """The training loop's configuration from the shared optimisation and run arguments."""
    from robustlab.training.config import TrainConfig

    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        lr_schedule=args.lr_schedule, momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed,
        precision=args.precision, memory_format=args.memory_format, num_workers=getattr(args, "num_workers", 0),
        progress=not args.no_progress,
        best_metric=best_metric, max_steps_per_epoch=getattr(args, "max_steps_per_epoch", None),
        tensorboard=getattr(args, "tensorboard", False),
    )  # fmt: skip


def split_of(args: argparse.Namespace, split: str, n: int | None) -> Any:
    """The first ``n`` items (None: all) of the dataset's ``split``."""
    from robustlab.data import first_n, load_dataset

    data = load_dataset(args.dataset, split, args.data_root, args.download, image_size=args.image_size,
                        channels=args.channels)  # fmt: skip
    return first_n(data, n)


def threat_of(args: argparse.Namespace) -> ThreatModel | None:
    """The threat model of ``--norm/--eps/--bounds`` (None without ``--eps``)."""
    from robustlab.threat import ThreatModel

    return ThreatModel(args.norm, args.eps, args.bounds) if getattr(args, "eps", None) is not None else None


def load_teacher(args: argparse.Namespace, spec: str, device: torch.device) -> tuple[torch.nn.Module, str | None]:
    """The teacher/encoder classifier named by ``spec`` and its architecture (where robustlab knows it)."""
    from robustlab.models import load_model, model_arch

    net = load_model(spec, args.checkpoint, args.trust_checkpoint, device=device)
    return net, model_arch(spec)[0]


def run_training_command(
    args: argparse.Namespace, build: Callable[[torch.device], TrainingSetup], keys: tuple[str, ...] = ()
) -> int:
    """A training subcommand's one library call (:func:`robustlab.training.run_training`) and its printing."""
    from robustlab.io import markdown_table
    from robustlab.training.run import run_training

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    neutral = RESUME_NEUTRAL | set(getattr(args, "resume_neutral", ()))
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in neutral}
    report = run_training(
        args.command, settings, build, args.out, resume=args.resume, overwrite=args.overwrite, device=args.device,
        trust_checkpoint=getattr(args, "trust_checkpoint", False), command_line=args.command_line,
        on_start=lambda setup: print(setup.banner, flush=True), on_epoch=lambda stats: _print_epoch(stats, args, keys),
    )  # fmt: skip
    if report is not None:  # rank 0
        print(markdown_table(["metric", "value"], report.summary_rows()))
        print(f"report: {Path(args.out) / 'report.json'}; model: {Path(args.out) / 'model.pt'}", flush=True)
    return 0


def _print_epoch(s: dict, args: argparse.Namespace, keys: tuple[str, ...]) -> None:
    parts = [f"{k} {s[k]:.4f}" for k in ("loss", *keys) if k in s] + (
        ["CATASTROPHIC OVERFITTING"] if s.get("co") else []
    )
    print(f"epoch {s['epoch']:>3}/{args.epochs}  {s['epoch_seconds']:.1f}s  " + "  ".join(parts), flush=True)
