"""``robustlab ssl``: stage 1, a self-supervised teacher encoder (SimCLR or SimCo) with a kNN monitor."""

from __future__ import annotations

import argparse

import torch

from robustlab.cli import common as c
from robustlab.models import ARCHITECTURES

EXAMPLE = "robustlab ssl --method simclr --model cnn --dataset fashion-mnist --n 10000 --epochs 5 --out runs/ssl"


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
        "--model", required=True, metavar="ARCH|SPEC",
        help=f"a fresh architecture ({', '.join(ARCHITECTURES)}) or an encoder to start from (zoo:NAME, "
        "torchvision:NAME, package.module:factory, or a robustlab run folder); SPEC@FILE starts from the weights "
        "in FILE",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint", metavar="FILE", help="start weights of --model: as --model SPEC@FILE (default: none)"
    )
    p.add_argument("--trust-checkpoint", action="store_true", help=c.TRUST_HELP)
    c.add_training_args(p, "ssl", eps=False)
    s = p.add_argument_group("self-supervised method")
    s.add_argument("--temperature", type=c.positive_float, default=0.2, help="InfoNCE / SimCo tau_alpha (default: 0.2)")
    s.add_argument("--tau-beta", type=c.positive_float, default=1.0, help="SimCo's second temperature (default: 1.0)")
    s.add_argument("--proj-hidden", type=c.positive_int, default=512, help="projector hidden width (default: 512)")
    s.add_argument("--proj-dim", type=c.positive_int, default=128, help="projection dimension (default: 128)")
    s.add_argument(
        "--knn-n", type=c.nonnegative_int, default=2000,
        help="labelled items of the kNN monitor (0: off; default: 2000)",
    )  # fmt: skip
    p.set_defaults(run=lambda args: c.run_training_command(args, lambda device: setup(args, device), KEYS))


KEYS = ("positive_cos", "knn_accuracy")


def setup(args: argparse.Namespace, device: torch.device):  # -> TrainingSetup
    """What ``robustlab ssl`` trains: encoder + projector with SimCLR/SimCo, a kNN monitor; model.pt is the encoder's
    classifier."""
    from robustlab.models import load_model, model_arch, seeded_weights
    from robustlab.ssl import KNNMonitor, SSLModel, make_ssl_method
    from robustlab.training import TrainingSetup

    train_set = c.split_of(args, "train", args.n)
    net = load_model(args.model, args.checkpoint, args.trust_checkpoint, device, dataset=args.dataset, seed=args.seed)
    arch = model_arch(args.model)[0]
    with seeded_weights(args.seed):
        model = SSLModel(net, args.proj_hidden, args.proj_dim).to(device)
    options = {"tau_beta": args.tau_beta} if args.method == "simco" else {}
    method = make_ssl_method(args.method, temperature=args.temperature, seed=args.seed, **options)
    callbacks = []
    if args.knn_n > 0:
        full_train, test = c.split_of(args, "train", None), c.split_of(args, "test", None)  # same image size
        callbacks.append(KNNMonitor.from_datasets(full_train, test, args.knn_n))  # more than exist: refused
    return TrainingSetup(
        model, method, train_set, c.train_config(args), callbacks, saved=net, summary_keys=("knn_accuracy",),
        method_info={"projector": [args.proj_hidden, args.proj_dim], "model": args.model, "arch": arch},
        report={"dataset": args.dataset},
        model_file={"arch": arch, "dataset": args.dataset, "stage": "ssl", "method": args.method},
        banner=f"{args.method} on {args.dataset} ({len(train_set)} images, labels unused), model {args.model}",
    )  # fmt: skip
