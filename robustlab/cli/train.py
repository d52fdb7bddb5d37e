"""``robustlab train``: adversarial training (NoiseAug, FGSM-RS, N-FGSM, GradAlign, PGD-AT, ...) with a
catastrophic-overfitting monitor, resumable checkpoints, DDP under torchrun and a final evaluation."""

from __future__ import annotations

import argparse

import torch

from robustlab.cli import common as c
from robustlab.defenses.methods import METHODS, NOISE_KINDS
from robustlab.defenses.monitor import ON_CO
from robustlab.models import ARCHITECTURES

EXAMPLE = "robustlab train --method noiseaug --model cnn --dataset fashion-mnist --eps 0.1 --epochs 10 --out runs/na"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="adversarial training: noiseaug, fgsm-rs, n-fgsm, gradalign, pgd (PGD-AT), fgsm, standard",
        description="Train a model with one of the (fast) adversarial training methods, watch for catastrophic "
        "overfitting, checkpoint every epoch (resume with --resume) and evaluate at the end (OUT/report.json, "
        f"report.md, curves.png, model.pt). Under torchrun it trains with DDP. Example: {EXAMPLE}",
    )
    p.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    p.add_argument(
        "--model", required=True, metavar="ARCH|SPEC",
        help=f"a fresh architecture ({', '.join(ARCHITECTURES)}) or a model to start from: zoo:NAME, a robustlab run "
        "folder or model.pt, torchvision:NAME (--num-classes), package.module:factory; SPEC@FILE starts from the "
        "weights in FILE",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint", metavar="FILE", help="start weights of --model: as --model SPEC@FILE (default: none)"
    )
    p.add_argument(
        "--num-classes", type=c.positive_int,
        help="outputs of the model (default: the training set's classes for an architecture, else the model's)",
    )  # fmt: skip
    p.add_argument("--trust-checkpoint", action="store_true", help=c.TRUST_HELP)
    c.add_training_args(p, "train", eps=True)
    p.add_argument(
        "--eval-n", type=c.nonnegative_int, default=1000,
        help="test items of the final PGD-50-10 evaluation (default: 1000; its cost is ~500 forward+backward passes "
        "per item: lower it, or 0 to skip)",
    )  # fmt: skip
    g = p.add_argument_group("method")
    c.add_step_size_arg(g, "step size (default: 1.25*eps fgsm-rs/noiseaug/gradalign, eps fgsm/n-fgsm, eps/4 pgd)")
    g.add_argument("--noise", choices=NOISE_KINDS, help="noiseaug: noise distribution (default: uniform)")
    g.add_argument("--noise-sigma", type=c.nonnegative_float, help="noiseaug: noise scale in units of eps (default: 2)")
    g.add_argument("--noise-multiple", type=c.nonnegative_float, help="n-fgsm: noise U(-m eps, m eps) (default: 2)")
    g.add_argument("--k", dest="noise_multiple", type=c.nonnegative_float, help=argparse.SUPPRESS)  # the old name
    g.add_argument("--gradalign-lambda", type=c.nonnegative_float, help="gradalign: regulariser weight (default: 0.2)")
    g.add_argument("--steps", dest="pgd_steps", type=c.positive_int, metavar="T",
                   help="pgd: steps of the inner PGD (default: 10)")  # fmt: skip
    g.add_argument("--pgd-steps", dest="pgd_steps", type=c.positive_int, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # its name before 0.2 (finetune's --pgd-steps meant evaluation steps)
    p.add_argument("--amp", dest="precision", action="store_const", const="fp16", help=argparse.SUPPRESS)  # old name
    p.add_argument("--num-workers", type=c.nonnegative_int, default=0, help="data loader workers (default: 0)")
    m = p.add_argument_group("catastrophic-overfitting monitor and evaluation")
    m.add_argument(
        "--monitor-n", type=c.nonnegative_int, default=512,
        help="training samples the monitor attacks (0: off; default: 512)",
    )
    m.add_argument(
        "--monitor-every", type=c.nonnegative_int, default=0,
        help="also check every N steps (default: 0, epochs only)",
    )
    m.add_argument("--on-co", choices=ON_CO, default="rollback", help="on CO: stop, rollback (default), continue")
    m.add_argument("--autoattack", action="store_true", help="also evaluate with AutoAttack (standard)")
    m.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.add_argument("--export", metavar="FILE", help="also save the final model's state dict here (default: not)")
    p.add_argument("--threads", type=c.positive_int, help="CPU threads per process (default: torch's choice)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    keys = ("monitor_clean_acc", "monitor_fgsm_acc", "monitor_pgd_acc")
    return c.run_training_command(args, lambda device: setup(args, device), keys)


def setup(args: argparse.Namespace, device: torch.device):  # -> TrainingSetup
    """What ``robustlab train`` trains: the method, the model, the data, the CO monitor and the final evaluation."""
    from robustlab.data import num_classes_of
    from robustlab.defenses import COMonitor, make_method
    from robustlab.models import load_model, model_arch, split_weights
    from robustlab.training import FinalEvaluation, TrainingSetup

    threat = c.threat_of(args)
    method = make_method(
        args.method, threat, args.step_size, noise=args.noise, noise_sigma=args.noise_sigma,
        noise_multiple=args.noise_multiple, lam=args.gradalign_lambda, steps=args.pgd_steps,
    )  # fmt: skip
    train_set = c.split_of(args, "train", args.n)
    classes = num_classes_of(train_set, args.dataset)  # an image folder's: its class folders
    fresh = split_weights(args.model)[0] in ARCHITECTURES
    outputs = args.num_classes or (classes if fresh else None)  # a fresh net fits the data
    model = load_model(args.model, args.checkpoint, args.trust_checkpoint, device, outputs, dataset=args.dataset,
                       seed=args.seed, input_shape=train_set[0][0].shape)  # fmt: skip
    callbacks = []
    if args.monitor_n > 0:
        xs, ys = zip(*(train_set[i] for i in range(min(args.monitor_n, len(train_set)))))
        monitor = COMonitor(torch.stack(xs), torch.tensor(ys), threat, on_co=args.on_co,
                            every_steps=args.monitor_every, seed=args.seed)  # fmt: skip
        callbacks.append(monitor)
    evaluation = None
    if not args.no_eval and args.eval_n > 0:
        evaluation = FinalEvaluation(c.split_of(args, "test", args.eval_n), threat, autoattack=args.autoattack,
                                     seed=args.seed, progress=not args.no_progress)  # fmt: skip
    config = c.train_config(args, best_metric="monitor_pgd_acc" if args.monitor_n > 0 else None)
    return TrainingSetup(
        model, method, train_set, config, callbacks, evaluation, export=args.export, num_classes=classes,
        curves_title=f"{method.name}, eps={threat.eps:.4g}",
        report={"model": args.model, "dataset": args.dataset},
        model_file={"arch": model_arch(args.model)[0], "dataset": args.dataset, "stage": "train",
                    "method": args.method},
        banner=f"training {args.model} on {args.dataset} with {method.name} ({threat.norm} eps={threat.eps:.4g})"
        + (f"; then PGD-50-10 on {len(evaluation.test_set)} test images (--eval-n)" if evaluation else ""),
    )  # fmt: skip
