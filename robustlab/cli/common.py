"""Arguments and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import MISSING, fields
from fractions import Fraction
from typing import Any

import torch

from robustlab.errors import RobustlabError
from robustlab.threat import parse_eps
from robustlab.training.run import resolve_device  # noqa: F401 (the subcommands import it from here)


def _checked(text: str, whole: bool, low: float, strict: bool = False) -> Any:
    """``text`` as a finite number (whole; or a float, ``8/255`` allowed) >= ``low`` (> with ``strict``), or the
    argparse error naming it."""
    try:
        value = int(text) if whole else float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if whole else 'number'}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    if value < low or (strict and value == low):
        raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _checked(text, True, 1)


def nonnegative_int(text: str) -> int:  # 0 usually means off
    return _checked(text, True, 0)


def positive_float(text: str) -> float:
    return _checked(text, False, 0, strict=True)


def nonnegative_float(text: str) -> float:
    return _checked(text, False, 0)


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


def topk_list(text: str) -> list[int]:
    """``--topk 1,2,3,5`` -> ``[1, 2, 3, 5]`` (k >= 1; the model's class count bounds it later)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"give k >= 1, e.g. 1,2,3,5; got {text!r}")
    return values


def topk_tuple(args: argparse.Namespace) -> tuple[int, ...] | None:
    """``--topk`` as a config takes it (None: the default k's)."""
    return tuple(args.topk) if args.topk else None


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
    values = tuple(_checked(v, False, -math.inf) for v in text.split(",") if v.strip())
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
    parser: argparse.ArgumentParser, eps: bool | float | str | None = True, many: bool = False, unset: str = "none"
) -> None:
    """The threat model group: ``--norm``, ``--eps`` (``eps`` True: required; a number or string: its default;
    None: optional, ``unset`` saying what no eps means; ``many``: a comma-separated list of radii), ``--bounds``."""
    g = parser.add_argument_group("threat model")
    g.add_argument("--norm", default="linf", help="linf or l2 (default: linf)")
    default = None if eps is None or isinstance(eps, bool) else eps
    said = "required" if eps is True else f"default: {unset}" if default is None else f"default: {default:.4g}"
    said = f"default: {default}" if isinstance(default, str) else said
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


def threat_of(args: argparse.Namespace) -> Any:
    """The :class:`~robustlab.threat.ThreatModel` of ``--norm/--eps/--bounds`` (None without ``--eps``; the largest
    of several radii)."""
    from robustlab.threat import ThreatModel

    eps = getattr(args, "eps", None)
    if eps is None:
        return None
    return ThreatModel(args.norm, max(eps) if isinstance(eps, list) else eps, args.bounds)


ATTACK_HELP = {
    "steps": "steps of every chosen attack that takes steps (default: each attack's own, e.g. pgd 10, fgsm 1)",
    "step_size": "step size of every chosen attack that takes one (default: each attack's own, e.g. pgd 2.5*eps/steps)",
    "loss": "loss of every chosen attack that takes one: {losses} (default: each attack's own, e.g. ce)",
    "restarts": "random restarts of every chosen attack that takes them (default: each attack's own, e.g. pgd 1)",
}


def add_attack_args(parser: Any, options: tuple[str, ...] = tuple(ATTACK_HELP), **helps: str) -> None:
    """The attack defaults ``--steps``, ``--step-size``, ``--loss``, ``--restarts`` (those in ``options``; ``helps``
    replaces an option's help): a default for every chosen attack that takes it, refused when none does. On a
    parser, in a group with ``--seed`` and ``--batch-size``: the fields of ``eval.configs.AttackOptions``."""
    from robustlab.losses import loss_names

    group = isinstance(parser, argparse.ArgumentParser)
    g = parser.add_argument_group("attacks") if group else parser
    types = {"steps": positive_int, "step_size": positive_float, "loss": str, "restarts": positive_int}
    for name in options:
        text = helps.get(name, ATTACK_HELP[name]).replace("{losses}", ", ".join(loss_names()))
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, type=types[name], help=text)
    if group:
        from robustlab.eval.configs import AttackOptions

        d = defaults_of(AttackOptions)
        g.add_argument("--seed", type=int, default=d["seed"], help="seed of the attacks' own random generators")
        g.add_argument("--batch-size", type=positive_int, default=d["batch_size"], help="samples per batch")


def attack_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """The attack defaults, seed, batch size and the arguments themselves (``extra``, recorded in the report), as
    keyword arguments of a run's config."""
    keys = ("steps", "step_size", "loss", "restarts", "seed", "batch_size")
    options = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    return {**options, "extra": {k: v for k, v in vars(args).items() if k != "run"}}


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
