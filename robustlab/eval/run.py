"""An evaluation run in one call: ``run_evaluation(model, data, EvalConfig(...), out)`` does what ``robustlab eval``
does -- robust accuracy per eps under a list of attacks, top-k statistics, sanity checks -- with one run per
folder (locked), ``resume`` of finished batches, sharding under torchrun, and ``results.pt``/``report.*``/plots."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.attacks import attack_from_spec, split_specs
from robustlab.distributed import Shard, barrier, current_shard, finish, init_distributed, shard_device
from robustlab.errors import RobustlabError
from robustlab.eval.evaluator import EvalResult, Evaluator, gather_batches, merge_batches
from robustlab.eval.report import EpsEntry, EvalReport
from robustlab.eval.sanity import Flag, eps_curve_flag, run_sanity_checks
from robustlab.eval.sources import (
    Data,
    DataSource,
    ModelSource,
    first_batch,
    probe,
    resolve_data,
    resolve_model,
    settings,
)
from robustlab.io import atomic_torch_save, environment, write_json
from robustlab.runs import RunFolder, text_digest
from robustlab.threat import ThreatModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """Everything that changes an evaluation's result.

    ``attacks`` are specs (``"pgd,autoattack"``, ``["pgd(steps=50)", "autoattack"]``) built with ``steps``,
    ``step_size``, ``loss``, ``restarts`` and ``seed`` as defaults, or ``{name: attack}`` objects. ``only_robust``
    runs each attack only on what the previous ones left robust (AutoAttack's protocol). ``sanity_n`` samples go
    through the gradient-masking checks (0 skips them).
    """

    eps: tuple[float, ...]
    attacks: str | tuple[str, ...] | Mapping[str, Any] = "pgd,autoattack"
    norm: str = "linf"
    bounds: tuple[float, float] = (0.0, 1.0)
    topk: tuple[int, ...] | None = None
    only_robust: bool = True
    batch_size: int = 256
    seed: int = 0
    sanity_n: int = 100
    steps: int | None = None
    step_size: float | None = None
    loss: str | None = None
    restarts: int | None = None
    plots: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in report.json's config, changes nothing

    def __post_init__(self) -> None:
        eps = (self.eps,) if isinstance(self.eps, (int, float)) else tuple(self.eps)
        object.__setattr__(self, "eps", eps)
        if not eps or any(not math.isfinite(e) or e < 0 for e in eps):
            raise RobustlabError(f"eps {list(eps)}: give one or more finite radii >= 0")
        if self.sanity_n < 0:
            raise RobustlabError(f"--sanity-n {self.sanity_n} is negative; give 0 (skip the checks) or more samples")
        if self.batch_size < 1:
            raise RobustlabError(f"--batch-size {self.batch_size}: give 1 or more")
        if self.topk is not None and (not self.topk or min(self.topk) < 1):
            raise RobustlabError(f"--topk {list(self.topk)}: give k >= 1, e.g. 1,2,3,5")
        for e in eps:
            ThreatModel(self.norm, e, self.bounds)  # one line for a bad norm, eps or bounds, before any work

    def build_attacks(self) -> dict[str, Any]:
        """``{name: attack}`` in order (specs built with the shared defaults); a repeated spec is refused."""
        if isinstance(self.attacks, Mapping):
            return dict(self.attacks)
        specs = split_specs(self.attacks) if isinstance(self.attacks, str) else [s.strip() for s in self.attacks]
        repeated = sorted({s for s in specs if specs.count(s) > 1})
        if repeated:
            raise RobustlabError(f"attack {repeated[0]!r} is listed twice; give each attack once")
        defaults = {"steps": self.steps, "step_size": self.step_size, "loss": self.loss, "restarts": self.restarts}
        return {spec: attack_from_spec(spec, seed=self.seed, **defaults) for spec in specs}

    def fingerprint(self, attacks: Mapping[str, Any]) -> dict[str, Any]:
        """What the cached per-eps batches depend on (eps has a folder per value; sanity_n its own cache key)."""
        keys = settings(self, exclude=("eps", "sanity_n", "topk", "plots", "extra", "attacks"))
        configs = {name: getattr(a, "config", dict)() for name, a in attacks.items()}
        keys["attacks"] = configs if isinstance(self.attacks, Mapping) else list(attacks)  # specs + the defaults
        return keys


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
    started = time.time()
    device = torch.device(device) if device is not None else torch.device("cpu")
    attacks = config.build_attacks()
    joined = not current_shard().distributed  # a caller's own process group is left alone
    shard = init_distributed(device)
    try:
        device = shard_device(device, shard)
        module, model_name, model_key = resolve_model(model, device)
        data, data_name, split, data_key = resolve_data(dataset)
        probe(module, data, device, config.topk)
        fingerprint = {**model_key, **data_key, **config.fingerprint(attacks)}
        folder = (
            RunFolder(
                out, "eval", fingerprint, resume=resume, overwrite=overwrite, is_main=shard.is_main,
                barrier=lambda: barrier(shard),
            )
            if out is not None
            else contextlib.nullcontext()
        )  # fmt: skip
        with folder:
            path = Path(out) if out is not None else None
            report = _evaluate(module, data, config, attacks, path, shard, device, progress, fingerprint)
            report.model, report.dataset, report.split = model_name, data_name, split
            report.world_size, report.rank, report.environment = shard.world, shard.rank, environment(command_line)
            report.wall_time_s = round(time.time() - started, 3)
            if path is not None and shard.is_main:
                report.files = {"results": str(path / "results.pt")}
                report.write(path, plots=config.plots)
            barrier(shard)
            return report
    finally:
        if joined:
            finish(shard)


def _evaluate(
    model: nn.Module, data: Data, config: EvalConfig, attacks: dict[str, Any], out: Path | None, shard: Shard,
    device: torch.device, progress: bool, fingerprint: dict | None = None,
) -> EvalReport:  # fmt: skip
    """The eps loop (per-eps batches cached in ``out/partial``), ``results.pt`` and the sanity checks."""
    threat = ThreatModel(config.norm, config.eps[0], config.bounds)
    entries: list[EpsEntry] = []
    states = []
    for eps in config.eps:
        evaluator = Evaluator(
            attacks, threat.with_eps(eps), batch_size=config.batch_size, only_robust=config.only_robust,
            progress=progress and shard.is_main, device=device,
        )  # fmt: skip
        cache = out / "partial" / f"eps-{float(eps)!r}" if out is not None else None
        gathered = gather_batches(evaluator.run_batches(model, data, cache, shard.as_tuple()), shard)
        if gathered is not None:
            result = merge_batches(gathered, list(attacks))
            entries.append(EpsEntry.from_result(eps, result, config.topk))
            states.append(result.to_state())
            log.info("eps %.4g: clean %.4f, robust %.4f", eps, result.clean_accuracy, result.robust_accuracy)
    sanity = None
    if shard.is_main and out is not None:
        atomic_torch_save({"eps": list(config.eps), "attacks": list(attacks), "results": states}, out / "results.pt")
    if shard.is_main and config.sanity_n > 0:
        sanity = _sanity(model, data, config, threat, device, out, fingerprint or {})
        if len(entries) > 1:
            curve = eps_curve_flag([e.eps for e in entries], [e.robust_accuracy for e in entries])
            sanity.append(Flag(**{**curve.to_dict(), "name": "rises_with_eps_in_evaluation"}))
    n = len(data[1]) if isinstance(data, tuple) else len(data)  # type: ignore[arg-type]
    configs = {name: getattr(a, "config", dict)() for name, a in attacks.items()}
    return EvalReport(
        model=type(model).__name__, dataset="-", split="-", n=n, norm=threat.norm, bounds=tuple(threat.bounds),
        eps=list(config.eps), only_robust=config.only_robust,
        attacks=configs, seeds={"seed": config.seed, "attacks": {n: c.get("seed") for n, c in configs.items()}},
        results=entries, sanity=sanity,
        config={**settings(config, exclude=("attacks", "extra")), **config.extra},
    )  # fmt: skip


def _sanity(
    model: nn.Module, data: Data, config: EvalConfig, threat: ThreatModel, device: torch.device, out: Path | None,
    fingerprint: dict,
) -> list[Flag]:  # fmt: skip
    """The gradient-masking checks on the first ``sanity_n`` samples, cached under a key of everything they
    depend on (the run's fingerprint, eps, sanity_n, steps, seed): a resumed run with other settings recomputes."""
    depends = {**fingerprint, "eps": config.eps[0], "sanity_n": config.sanity_n, "steps": config.steps}
    key = text_digest(json.dumps(depends, sort_keys=True, default=str))[:16]
    path = out / "partial" / f"sanity-{key}.json" if out is not None else None
    if path is not None and path.exists():
        try:
            return [Flag(**f) for f in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError) as exc:
            log.warning("recomputing the sanity checks: %s is unreadable (%s)", path, exc)
    x, y = first_batch(data, config.sanity_n)
    flags = run_sanity_checks(model, x.to(device), y.to(device), threat, steps=config.steps or 10, seed=config.seed)
    if path is not None:
        write_json(path, [f.to_dict() for f in flags])
    return flags


def load_results(out: str | os.PathLike) -> list[EvalResult]:
    """The per-eps :class:`EvalResult` objects a run saved in ``out/results.pt`` (safe loading)."""
    from robustlab.io import safe_load

    return [EvalResult.from_state(s) for s in safe_load(Path(out) / "results.pt", what="results file")["results"]]


__all__ = ["EvalConfig", "load_results", "run_evaluation"]
