"""Arguments and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import MISSING, fields
from fractions import Fraction
from typing import Any

import torch

from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel, parse_eps
from robustlab.training.run import resolve_device


def number(whole: bool, low: float, strict: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite number (whole; or a float, ``8/255`` allowed) >= ``low`` (> with ``strict``), or
    the argparse error naming the text."""

    def parse(text: str) -> Any:
        try:
            value = int(text) if whole else float(Fraction(text.strip())) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if whole else 'number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text}")
        return value

    return parse


positive_int = number(True, 1)
nonnegative_int = number(True, 0)  # 0 usually means off
positive_float = number(False, 0, strict=True)
nonnegative_float = number(False, 0)


def eps_value(text: str) -> float:
    try:
        return parse_eps(text)
    except RobustlabError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def defaults_of(config: type) -> dict[str, Any]:
    """The defaults of a config class's fields: the CLI's defaults are the library's, shown in ``--help``."""
    return {f.name: f.default for f in fields(config) if f.default is not MISSING}


def subparser(subparsers: argparse._SubParsersAction, name: str, description: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``, with its one-line help from :data:`robustlab.cli.SUBCOMMANDS`."""
    from robustlab.cli import SUBCOMMANDS

    return subparsers.add_parser(name, help=SUBCOMMANDS[name], description=description)


def topk_list(text: str) -> tuple[int, ...]:
    """``--topk 1,2,3,5`` -> ``(1, 2, 3, 5)`` (k >= 1; the model's class count bounds it later)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
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
    """The model group: ``flag`` (a spec), ``--checkpoint``, ``--num-classes``, ``--mean/--std``, ``--model-dir``,
    ``--trust-checkpoint``."""
    g = parser.add_argument_group("model")
    g.add_argument(flag, required=True, metavar="SPEC", help=MODEL_HELP)
    g.add_argument("--checkpoint", metavar="FILE",
                   help=f"weights (a state dict) of {flag}: the same as {flag} SPEC@FILE (default: the spec's own)")
    g.add_argument("--num-classes", type=positive_int, metavar="C",
                   help="outputs of a torchvision:/module:factory model (default: the factory's; torchvision: 1000)")
    norm = "(default: none; torchvision: ImageNet's)"
    g.add_argument("--mean", type=float_list, metavar="M,M,M", help=f"normalisation mean per channel {norm}")
    g.add_argument("--std", type=float_list, metavar="S,S,S", help=f"normalisation std per channel {norm}")
    g.add_argument("--model-dir", dest="checkpoint", metavar="DIR",
                   help="robustbench: models folder (default: ./models)")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="load the checkpoint with weights_only=False (only for files you trust)")


def float_list(text: str) -> tuple[float, ...]:
    """``0.5,0.5,0.5`` -> ``(0.5, 0.5, 0.5)`` (finite numbers)."""
    values = tuple(number(False, -math.inf)(v) for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers")
    return values


def model_source(args: argparse.Namespace) -> Any:
    """The :class:`robustlab.eval.ModelSource` of ``--model``, ``--checkpoint``, ``--num-classes``, ``--mean/--std``
    (a warning for an encoder whose head never saw a label)."""
    from robustlab.eval import ModelSource

    source = ModelSource(args.model, args.checkpoint, args.trust_checkpoint, args.num_classes, args.mean, args.std)
    if warning := source.head_warning():
        print(f"warning: {warning}", file=sys.stderr)
    return source


def data_source(args: argparse.Namespace, model: str | None = None) -> Any:
    """The :class:`robustlab.eval.DataSource` of the data arguments (an image folder shaped for the model file
    ``model``: :meth:`~robustlab.eval.DataSource.shaped_for`)."""
    from robustlab.eval import DataSource

    data = DataSource(args.dataset, args.split, args.n, args.data_root, args.download, args.image_size, args.channels)
    return data.shaped_for(model)


DATA_ROOT_HELP = "where the dataset lives, searched first (default: the usual places, then a download)"
IMAGE_SIZE_HELP = "imagefolder: resize to PX, centre-crop PX x PX (default: a model file's size, else 256, crop 224)"


def add_data_args(parser: argparse.ArgumentParser, split: bool = True) -> None:
    """The data group: ``--dataset``, ``--split`` (with ``split``; else the training split), ``--n``,
    ``--data-root``, ``--image-size``, ``--channels``, ``--no-download``."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", required=True, metavar="NAME",
                   help="fashion-mnist, mnist, cifar10, cifar100, svhn or imagefolder:PATH")  # fmt: skip
    if split:
        g.add_argument("--split", default="test", choices=["train", "test"], help="dataset split (default: test)")
    g.add_argument("--n", type=int, help="use the first N items of the split (default: all)")
    g.add_argument("--data-root", metavar="DIR", help=DATA_ROOT_HELP)
    g.add_argument("--image-size", type=positive_int, metavar="PX", help=IMAGE_SIZE_HELP)
    g.add_argument("--channels", type=int, choices=[1, 3], help="imagefolder: 1 grey or 3 RGB (default: 3)")
    g.add_argument("--no-download", dest="download", action="store_false",
                   help="never download: fail if the dataset is not on disk (default: download only what is missing)")


def eps_list(text: str) -> list[float]:
    """``0.02,0.05,8/255`` -> the radii."""
    values = [eps_value(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one eps, e.g. --eps 0.1 or --eps 0.02,0.05,0.1")
    return values


def add_threat_args(
    parser: argparse.ArgumentParser, eps: bool | float | None = True, many: bool = False, unset: str = "none"
) -> None:
    """The threat model group: ``--norm``, ``--eps`` (``eps`` True: required; a number: its default;
    None: optional, ``unset`` saying what no eps means; ``many``: a comma-separated list of radii), ``--bounds``."""
    g = parser.add_argument_group("threat model")
    g.add_argument("--norm", default="linf", help="linf or l2 (default: linf)")
    default = None if eps is None or isinstance(eps, bool) else eps
    said = "required" if eps is True else f"default: {unset}" if default is None else f"default: {default:.4g}"
    what = "one or more radii, e.g. 8/255 or 0.02,0.05,0.1" if many else "radius of the eps-ball, e.g. 0.1 or 8/255"
    g.add_argument("--eps", required=eps is True, default=default, type=eps_list if many else eps_value,
                   help=f"{what} ({said})")  # fmt: skip
    g.add_argument("--bounds", default="0,1", type=bounds_value, metavar="LO,HI",
                   help="valid input range (default: 0,1)")  # fmt: skip


def bounds_value(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO,HI (e.g. 0,1)") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise argparse.ArgumentTypeError(f"bounds need finite LO < HI, got {text!r}")
    return lo, hi


def add_attack_args(parser: argparse.ArgumentParser) -> None:
    """The attacks group, the fields of :class:`robustlab.eval.configs.AttackOptions`: the attack defaults
    ``--steps``, ``--step-size``, ``--loss``, ``--restarts`` (each a default for every chosen attack that takes it,
    refused when none does), ``--seed`` and ``--batch-size``."""
    from robustlab.eval.configs import AttackOptions
    from robustlab.losses import loss_names

    d, g = defaults_of(AttackOptions), parser.add_argument_group("attacks")
    g.add_argument("--steps", type=positive_int, help="steps of every chosen attack that takes steps (default: each "
                   "attack's own, e.g. pgd 10, fgsm 1)")  # fmt: skip
    g.add_argument("--step-size", type=positive_float, help="step size of every chosen attack that takes one "
                   "(default: each attack's own, e.g. pgd 2.5*eps/steps)")  # fmt: skip
    g.add_argument("--loss", help=f"loss of every chosen attack that takes one: {', '.join(loss_names())} (default: "
                   "each attack's own, e.g. ce)")  # fmt: skip
    g.add_argument("--restarts", type=positive_int, help="random restarts of every chosen attack that takes them "
                   "(default: each attack's own, e.g. pgd 1)")  # fmt: skip
    g.add_argument("--seed", type=int, default=d["seed"], help="seed of the attacks' own random generators")
    g.add_argument("--batch-size", type=positive_int, default=d["batch_size"], help="samples per batch")


def config_from(config: type, args: argparse.Namespace, **values: Any) -> Any:
    """The arguments mapped onto ``config``: each field from the argument of its name (None: the field's default),
    the threat model from ``--norm/--eps/--bounds``, ``extra`` (recorded in the report) the arguments themselves;
    ``values`` set the fields no argument names."""
    names = {f.name for f in fields(config)}
    found = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "eps" in vars(args):  # several radii: the threat model holds the largest
        eps = max(args.eps) if isinstance(args.eps, list) else args.eps
        found["threat"] = None if eps is None else ThreatModel(args.norm, eps, args.bounds)
    if "extra" in names:
        found["extra"] = {k: v for k, v in vars(args).items() if k != "run"}
    return config(**{**found, **values})


def add_run_args(parser: argparse.ArgumentParser, out_default: str, resume: bool = False) -> None:
    """The run folder group: ``--out``, ``--resume`` (with ``resume``), ``--overwrite``, ``--device``,
    ``--no-progress``."""
    g = parser.add_argument_group("run folder")
    g.add_argument("--out", default=out_default, metavar="DIR", help=f"run folder (default: {out_default})")
    if resume:
        g.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    g.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run folder group as keyword arguments of :func:`~robustlab.eval.run_attack`, ``run_evaluation`` and
    ``run_transfer``."""
    return {"overwrite": args.overwrite, "progress": not args.no_progress, "device": resolve_device(args.device),
            "command_line": args.command_line}
