"""``robustlab train``: adversarial training (NoiseAug, FGSM-RS, N-FGSM, GradAlign, PGD-AT, ...) with a
catastrophic-overfitting monitor, resumable checkpoints, DDP under torchrun and a final evaluation."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from robustlab.cli.common import bounds_value, eps_value, positive_float, positive_int, run_distributed, train_config
from robustlab.data import first_n, load_dataset
from robustlab.defenses.loop import LR_SCHEDULES, OPTIMIZERS, train
from robustlab.defenses.methods import METHODS, NOISE_KINDS, make_method
from robustlab.defenses.monitor import ON_CO, COMonitor
from robustlab.defenses.report import evaluation_rows, final_evaluation, plot_curves, write_report
from robustlab.distributed import current_shard
from robustlab.io import atomic_torch_save, environment, markdown_table
from robustlab.models import ARCHITECTURES, build_model, load_model, seeded_weights
from robustlab.threat import ThreatModel

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
        "--model", required=True, help=f"architecture ({', '.join(ARCHITECTURES)}) or a model spec (zoo:NAME)"
    )
    p.add_argument("--checkpoint", metavar="FILE", help="start weights for a module:factory model spec")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load --checkpoint and --resume's last.pt with weights_only=False (only for files you trust)",
    )
    p.add_argument("--dataset", required=True, metavar="NAME", help="fashion-mnist, mnist, cifar10, ...")
    p.add_argument("--n", type=positive_int, help="train on the first N training items (default: all)")
    p.add_argument(
        "--eval-n", type=positive_int, default=1000, help="test items for the final evaluation (default: 1000)"
    )
    p.add_argument("--data-root", metavar="DIR", help="where the dataset lives (searched first)")
    p.add_argument(
        "--no-download", dest="download", action="store_false", help="never download: fail if the data is not on disk"
    )

    g = p.add_argument_group("threat model and method")
    g.add_argument("--norm", default="linf", help="linf or l2 (default: linf)")
    g.add_argument("--eps", required=True, type=eps_value, help="training radius, e.g. 0.1 or 8/255")
    g.add_argument("--bounds", default="0,1", type=bounds_value, metavar="LO,HI", help="input range (default: 0,1)")
    g.add_argument(
        "--alpha",
        type=positive_float,
        help="step size (default: 1.25*eps for fgsm-rs/noiseaug/gradalign, eps for fgsm/n-fgsm, eps/4 for pgd)",
    )
    g.add_argument("--noise", choices=NOISE_KINDS, help="noiseaug: noise distribution (default: uniform)")
    g.add_argument("--noise-sigma", type=float, help="noiseaug: noise scale in units of eps (default: 2)")
    g.add_argument("--k", type=float, help="n-fgsm: noise U(-k eps, k eps) (default: 2)")
    g.add_argument("--gradalign-lambda", type=float, help="gradalign: regulariser weight (default: 0.2)")
    g.add_argument("--pgd-steps", type=positive_int, help="pgd: steps of the inner PGD (default: 10)")

    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=positive_int, default=10, help="epochs (default: 10)")
    o.add_argument("--batch-size", type=positive_int, default=128, help="batch size per rank (default: 128)")
    o.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="sgd or adam (default: sgd)")
    o.add_argument("--lr", type=positive_float, default=0.1, help="peak/initial learning rate (default: 0.1)")
    o.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cyclic", help="(default: cyclic)")
    o.add_argument("--momentum", type=float, default=0.9, help="SGD momentum / Adam beta1 (default: 0.9)")
    o.add_argument("--weight-decay", type=float, default=5e-4, help="(default: 5e-4)")
    o.add_argument("--max-steps-per-epoch", type=positive_int, help="cut epochs short (smoke tests)")
    o.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    o.add_argument("--num-workers", type=int, default=0, help="data loader workers (default: 0)")
    o.add_argument("--seed", type=int, default=0, help="seed of weights, data order and noise (default: 0)")

    m = p.add_argument_group("catastrophic-overfitting monitor and evaluation")
    m.add_argument("--monitor-n", type=int, default=512, help="fixed training samples the monitor attacks (0: off)")
    m.add_argument("--monitor-every", type=int, default=0, help="also check every N steps (default: 0, epochs only)")
    m.add_argument("--on-co", choices=ON_CO, default="rollback", help="on CO: stop, rollback (default), continue")
    m.add_argument("--autoattack", action="store_true", help="also evaluate with AutoAttack (standard)")
    m.add_argument("--no-eval", action="store_true", help="skip the final evaluation")

    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--out", default="runs/train", metavar="DIR", help="run folder (default: runs/train)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--export", metavar="FILE", help="also save the final model's state dict here")
    p.add_argument("--threads", type=positive_int, help="CPU threads per process (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)


def _build(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    if ":" in args.model or args.model.endswith((".pt", ".pth")):
        return load_model(args.model, args.checkpoint, args.trust_checkpoint, device=device)
    with seeded_weights(args.seed):  # seeded weights without touching the caller's global RNG
        return build_model(args.model, args.dataset).to(device)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    return run_distributed(args, _run)


def _run(args: argparse.Namespace, device: torch.device, rank: int) -> int:
    world_size = current_shard().world
    started = time.time()
    threat = ThreatModel(args.norm, args.eps, args.bounds)
    method = make_method(
        args.method,
        threat,
        args.alpha,
        noise=args.noise,
        noise_sigma=args.noise_sigma,
        k=args.k,
        lam=args.gradalign_lambda,
        steps=args.pgd_steps,
    )
    train_full = load_dataset(args.dataset, "train", args.data_root, args.download)
    train_set = first_n(train_full, args.n)
    model = _build(args, device)
    config = train_config(args, best_metric="monitor_pgd_acc" if args.monitor_n > 0 else None)
    callbacks = []
    if args.monitor_n > 0:
        xs, ys = zip(*(train_set[i] for i in range(min(args.monitor_n, len(train_set)))))
        callbacks.append(
            COMonitor(
                torch.stack(xs),
                torch.tensor(ys),
                threat,
                on_co=args.on_co,
                every_steps=args.monitor_every,
                seed=args.seed,
            )
        )
    out = Path(args.out)  # locked and checked by run_distributed
    say = print if rank == 0 else (lambda *a, **k: None)

    def on_epoch(s: dict) -> None:
        parts = [f"loss {s.get('loss', float('nan')):.3f}"]
        parts += [
            f"{k[8:]} {100 * s[k]:.1f}%" for k in ("monitor_clean_acc", "monitor_fgsm_acc", "monitor_pgd_acc") if k in s
        ]
        co = "  CATASTROPHIC OVERFITTING" if s.get("co") else ""
        say(f"epoch {s['epoch']:>3}/{config.epochs}  {s['epoch_seconds']:.1f}s  " + "  ".join(parts) + co, flush=True)

    say(
        f"training {args.model} on {args.dataset} with {method.name} ({threat.norm} eps={threat.eps:.4g}), "
        f"{world_size} process(es)",
        flush=True,
    )
    result = train(
        model, method, train_set, config, out, resume=args.resume, callbacks=callbacks, device=device,
        on_epoch=on_epoch, trust_checkpoint=args.trust_checkpoint,
    )  # fmt: skip
    if rank != 0:
        return 0
    monitor = callbacks[0] if callbacks else None
    atomic_torch_save(model.state_dict(), out / "model.pt")
    if args.export:
        atomic_torch_save(model.state_dict(), args.export)
    evaluation = None
    if not args.no_eval:
        test_set = first_n(load_dataset(args.dataset, "test", args.data_root, args.download), args.eval_n)
        evaluation = final_evaluation(
            model,
            test_set,
            threat,
            autoattack=args.autoattack,
            seed=args.seed,
            device=device,
            progress=not args.no_progress,
        )
    report = {
        "method": method.config(),
        "model": args.model,
        "dataset": args.dataset,
        "train_samples": len(train_set),
        "config": asdict(config),
        "world_size": world_size,
        "evaluation": evaluation,
        "epochs_done": result.epochs_done,
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "co_events": monitor.events if monitor else [],
        "train_seconds": result.train_seconds,
        "epoch_seconds_mean": sum(h["epoch_seconds"] for h in result.history) / max(len(result.history), 1),
        "history": result.history,
        "wall_time_s": round(time.time() - started, 3),
        "environment": environment(args.command_line),
    }
    write_report(out, report)
    if result.history:
        plot_curves(result.history, out / "curves.png", title=f"{method.name}, eps={threat.eps:.4g}")
    rows = [["training time", f"{result.train_seconds:.1f} s ({result.epochs_done} epochs)"]]
    rows.append(["stopped early", result.stop_reason or "no"])
    rows.append(["CO detected", f"{len(report['co_events'])} time(s)"])
    rows += evaluation_rows(evaluation)
    print(markdown_table(["metric", "value"], rows))
    print(f"report: {out / 'report.json'}; model: {out / 'model.pt'}")
    sys.stdout.flush()
    return 0
