"""An evaluation run in one call: ``run_evaluation(model, data, EvalConfig(...), out)`` does what ``robustlab eval``
does -- robust accuracy per eps under a list of attacks, top-k statistics, sanity checks -- with one run per
folder (locked), ``resume`` of finished batches, sharding under torchrun, and ``results.pt``/``report.*``/plots."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.attacks.runtime import runtime_of
from robustlab.distributed import Shard, broadcast_object, gather_to_main
from robustlab.eval.adaptive import AdaptivePlan, plan_adaptive
from robustlab.eval.configs import EvalConfig
from robustlab.eval.curve import evaluation_curve
from robustlab.eval.evaluator import EvalResult, Evaluator, gather_batches, merge_batches
from robustlab.eval.indicators import evaluation_indicators
from robustlab.eval.metrics import class_names
from robustlab.eval.progress import EvalProgress
from robustlab.eval.report import EpsEntry, EvalReport, run_cost
from robustlab.eval.sanity import Flag, eps_curve_flag, run_sanity_checks
from robustlab.eval.sanity_budget import SanityBudget
from robustlab.eval.sources import (
    Data,
    DataSource,
    ModelSource,
    chance_flag,
    first_batch,
    probe,
    resolve_data,
    resolve_model,
)
from robustlab.executor import Run, execute
from robustlab.io import atomic_torch_save, check_digest, write_json
from robustlab.models.bpda import bpda, check_modules
from robustlab.models.counting import PassCount, count_passes, countable
from robustlab.runs import text_digest
from robustlab.threat import ThreatModel

log = logging.getLogger(__name__)


def run_evaluation(
    model: nn.Module | str | ModelSource,
    dataset: Data | str | DataSource,
    config: EvalConfig,
    out: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    device: str | torch.device | None = None,
    command_line: str | None = None,
) -> EvalReport:
    """Evaluate ``model`` on ``dataset`` under ``config``; with ``out``, lock that folder for the run, reuse its
    finished batches (``resume``), and write ``results.pt``, ``report.json``, ``report.md`` and plots there.

    Under torchrun every rank calls this; the batches are shared out, rank 0 writes and returns the report (the
    other ranks return it too, without sanity checks). Bad inputs raise one :class:`RobustlabError` line before
    any attack runs.
    """
    attacks = config.build()

    def build(run: Run) -> _Built:
        module, model_name, model_key = resolve_model(model, run.device)
        data, data_name, split, data_key = resolve_data(dataset)
        setup = PassCount()  # this rank's passes outside the evaluator and the sanity checks (TorchScript: uncounted)
        with count_passes(module, setup) if countable(module) else contextlib.nullcontext():
            probe(module, data, run.device, config.topk)
        check_modules(module, config.bpda)
        surrogate, surrogate_key = None, {}
        if config.surrogate is not None:  # its weights, too: a surrogate changed under the same name is another run
            surrogate, _, key = resolve_model(config.surrogate, run.device)
            surrogate_key = {"surrogate_state_sha256": key["model_state_sha256"]}
        fingerprint = {**model_key, **data_key, **config.fingerprint(), **surrogate_key}
        return _Built(module, data, model_name, data_name, split, fingerprint, surrogate, setup)

    return execute(
        "eval", build, lambda run, built: _work(run, built, config, attacks, progress), out,
        fingerprint=lambda built: built.fingerprint, resume=resume, overwrite=overwrite,
        scratch=("partial",),  # the per-batch cache serves only the resume of an unfinished run
        config={**config.settings(exclude=("attacks", "extra", "surrogate")), **config.extra},
        distributed=True, device=device, command_line=command_line,
    )  # fmt: skip


@dataclass
class _Built:
    """What an evaluation run loads and checks before it takes its folder."""

    module: nn.Module
    data: Data
    model_name: str
    data_name: str
    split: str
    fingerprint: dict[str, Any]
    surrogate: nn.Module | None
    setup: PassCount


def _work(run: Run, b: _Built, config: EvalConfig, attacks: dict[str, Any], progress: bool) -> EvalReport:
    """Sanity checks, adaptive plan and the eps loop; the report with its flags, names, cost and plots."""
    shard, path = run.shard, run.path
    with bpda(b.module, config.bpda):
        plan, sanity = _adapt(b.module, b.data, config, attacks, path, shard, run.device, b.fingerprint, b.surrogate,
                              b.setup, progress=progress)  # fmt: skip
        report = _evaluate(b.module, b.data, config, {**attacks, **plan.attacks}, path, shard, run.device, progress,
                           plan)  # fmt: skip
        if sanity is not None and shard.is_main:  # indicators of attack failure, beside the flags (setup's passes)
            with count_passes(b.module, b.setup) if countable(b.module) else contextlib.nullcontext():
                report.indicators = evaluation_indicators(b.module, b.data, config, config.threat, sanity, b.surrogate,
                                                          run.device)  # fmt: skip
        if config.curve and shard.is_main:  # the whole robustness curve from one minimum-norm run, its own passes
            report.curve = evaluation_curve(b.module, b.data, config, config.threat, run.device).to_dict()
    report.sanity = sanity
    if sanity is not None and len(report.results) > 1:
        curve = eps_curve_flag([e.eps for e in report.results], [e.robust_accuracy for e in report.results])
        message = curve.message + (" (nested eps: monotone by construction)" if config.nested else "")
        sanity.append(Flag(**{**curve.to_dict(), "name": "rises_with_eps_in_evaluation", "message": message}))
    report.model, report.dataset, report.split = b.model_name, b.data_name, b.split
    if report.results:
        report.class_names = class_names(b.data, b.data_name, len(report.results[0].per_class["n"]))
        chance = chance_flag(report.results[0].clean_accuracy, report.n, len(report.results[0].per_class["n"]))
        if chance is not None:  # in the report and, through the flags, on the terminal
            log.warning(chance.message)
            report.sanity = [*(report.sanity or []), chance]
    report.world_size, report.rank = shard.world, shard.rank
    setups = gather_to_main(b.setup.to_dict(), shard)  # every rank probes and plans: summed on rank 0
    if setups is not None:
        report.cost = run_cost(report.results, sanity, sum((PassCount.from_dict(s) for s in setups),
                                                           PassCount()).to_dict())  # fmt: skip
    if run.writes:
        report.files = {"results": str(run.folder.out / "results.pt")}  # type: ignore[union-attr]
        if config.plots:
            report.files.update(report.plots(path))
    return report


def _adapt(
    model: nn.Module, data: Data, config: EvalConfig, attacks: dict[str, Any], out: Path | None, shard: Shard,
    device: torch.device, fingerprint: dict, surrogate: nn.Module | None, setup: PassCount | None = None,
    progress: bool = False,
) -> tuple[AdaptivePlan, list[Flag] | None]:  # fmt: skip
    """The sanity checks (rank 0, before any attack) and the adaptive attacks they call for, on every rank."""
    threat = config.threat  # the largest eps
    flags = None
    if shard.is_main and config.sanity_n > 0:
        flags = _sanity(model, data, config, threat, device, out, fingerprint, progress)
    flags = broadcast_object(None if flags is None else [f.to_dict() for f in flags], shard)
    flags = None if flags is None else [Flag(**f) for f in flags]
    x, y = first_batch(data, min(8, config.sanity_n or 8))
    with count_passes(model, setup) if setup is not None and countable(model) else contextlib.nullcontext():
        plan = plan_adaptive(model, x.to(device), y.to(device), flags, config, list(attacks), surrogate)
    if plan.attacks:
        log.info("adaptive attacks added for flags %s: %s", plan.fired, list(plan.attacks))
    return plan, flags


def _evaluate(
    model: nn.Module, data: Data, config: EvalConfig, attacks: dict[str, Any], out: Path | None, shard: Shard,
    device: torch.device, progress: bool, plan: AdaptivePlan,
) -> EvalReport:  # fmt: skip
    """The eps loop (ascending and carried over when nested; per-eps batches cached in ``out/partial``) and
    ``results.pt``. Rank 0 returns the full report; the other ranks an empty one."""
    eps_order = sorted(set(config.eps)) if config.nested else list(config.eps)
    entries: list[EpsEntry] = []
    states, results = [], []
    prior = None
    suffix = "" if not plan.attacks and plan.predictions == 1 else "-" + _digest([*plan.attacks, plan.predictions])
    bar = EvalProgress(len(eps_order), len(attacks), config.batch_size) if progress and shard.is_main else None
    for i, eps in enumerate(eps_order):  # one bar for every eps (tqdm closes it on an error)
        evaluator = Evaluator(
            attacks, config.threat.with_eps(eps), batch_size=config.batch_size,
            only_robust=config.only_robust, progress=bar.at_eps(eps, i) if bar else False, device=device,
            predictions=plan.predictions, vote=config.vote, seed=config.seed,
        )  # fmt: skip
        nested = f"-after-{_digest(eps_order[:i])}" if config.nested and i else ""
        cache = out / "partial" / f"eps-{float(eps)!r}{nested}{suffix}" if out is not None else None
        mine = evaluator.run_batches(model, data, cache, shard.as_tuple(), prior=prior)
        prior = mine if config.nested else None
        gathered = gather_batches(mine, shard)
        if gathered is not None:
            result = merge_batches(gathered, list(attacks))
            entries.append(EpsEntry.from_result(eps, result, config.topk))
            states.append(result.to_state())
            results.append(result)
            log.info("eps %.4g: clean %.4f, robust %.4f", eps, result.clean_accuracy, result.robust_accuracy)
    if bar is not None:
        bar.finish()
    min_eps = smallest_breaking_eps([e.eps for e in entries], results) if results else None
    if shard.is_main and out is not None:
        saved = {"eps": [e.eps for e in entries], "attacks": list(attacks), "results": states, "min_eps": min_eps}
        atomic_torch_save(saved, out / "results.pt")
    n = len(data[1]) if isinstance(data, tuple) else len(data)  # type: ignore[arg-type]
    configs = {name: getattr(a, "config", dict)() for name, a in attacks.items()}
    return EvalReport(
        model=type(model).__name__, dataset="-", split="-", n=n, norm=config.threat.norm,
        bounds=tuple(config.threat.bounds),
        eps=[e.eps for e in entries] or list(eps_order), only_robust=config.only_robust,
        attacks=configs, seeds={"seed": config.seed, "attacks": {n: c.get("seed") for n, c in configs.items()}},
        results=entries, config={**config.settings(exclude=("attacks", "extra", "surrogate")), **config.extra},
        protocol="nested" if config.nested else "separate", adaptive=plan.to_dict(entries),
        judgement={"predictions": plan.predictions, "vote": config.vote}, min_eps=_min_eps_counts(entries, min_eps),
        runtime={name: runtime_of(a) for name, a in attacks.items() if runtime_of(a)},
    )  # fmt: skip


def smallest_breaking_eps(eps: list[float], results: list[EvalResult]) -> torch.Tensor:
    """Per sample, the smallest eps of the list at which it is not robust: 0 for a clean error, inf if never."""
    out = torch.full((results[0].n,), float("inf"), dtype=torch.float64)
    out[~results[0].clean_correct] = 0.0
    for e, result in sorted(zip(eps, results), key=lambda pair: pair[0]):
        out[~result.robust & torch.isinf(out)] = e
    return out


def _min_eps_counts(entries: list[EpsEntry], min_eps: torch.Tensor | None) -> dict[str, int]:
    if min_eps is None:
        return {}
    counts = {"clean error": int((min_eps == 0).sum())}
    counts.update({f"{e.eps:.4g}": int((min_eps == e.eps).sum()) for e in sorted(entries, key=lambda e: e.eps)})
    counts["not broken"] = int(torch.isinf(min_eps).sum())
    return counts


def _digest(values: list[Any]) -> str:
    return text_digest(json.dumps([repr(v) for v in values]))[:10]


def _sanity(
    model: nn.Module, data: Data, config: EvalConfig, threat: ThreatModel, device: torch.device, out: Path | None,
    fingerprint: dict, progress: bool = False,
) -> list[Flag]:  # fmt: skip
    """The gradient-masking checks on the first ``sanity_n`` samples, cached under a key of everything they
    depend on (the run's fingerprint, eps, sanity_n, steps, seed): a resumed run with other settings recomputes."""
    depends = {**fingerprint, "eps": threat.eps, "sanity_n": config.sanity_n, "steps": config.steps}
    key = text_digest(json.dumps(depends, sort_keys=True, default=str))[:16]
    path = out / "partial" / f"sanity-{key}.json" if out is not None else None
    if path is not None and path.exists():
        try:
            check_digest(path, "sanity cache")  # a damaged cache is recomputed, like an unreadable one
            return [Flag(**f) for f in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError) as exc:
            log.warning("recomputing the sanity checks: %s is unreadable (%s)", path, exc)
    x, y = first_batch(data, config.sanity_n)
    flags = run_sanity_checks(model, x.to(device), y.to(device), threat, steps=config.steps or 10, seed=config.seed,
                              progress=progress, budget=SanityBudget.of(config.build(), data))  # fmt: skip
    if path is not None:
        write_json(path, [f.to_dict() for f in flags])
    return flags


def load_results(out: str | os.PathLike) -> list[EvalResult]:
    """The per-eps :class:`EvalResult` objects a run saved in ``out/results.pt`` (safe loading)."""
    from robustlab.safe_load import safe_load

    return [EvalResult.from_state(s) for s in safe_load(Path(out) / "results.pt", what="results file")["results"]]


__all__ = ["EvalConfig", "load_results", "run_evaluation"]
