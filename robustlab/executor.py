"""The one executor of every kind of run (attack, eval, transfer, training): it owns the device, the process group,
the run folder (:class:`~robustlab.runs.RunFolder`: lock, resume check, staging), the user's extra output file
(``--save-adv``, ``--export``), the environment record, the wall time, and writing ``report.json``, ``report.md``
and ``report.html``. A kind of run plugs in with two functions::

    def build(run: Run) -> Built:          # load and check models and data on run.device; nothing is written yet
        ...

    def work(run: Run, built: Built) -> Report:  # the run's work; extra files go into run.path (None: no folder)
        ...

    report = execute("attack", build, work, out, fingerprint={...}, config={...}, overwrite=..., device=...)

``fingerprint`` (what ``--resume`` compares) is a dict, known before anything loads (the folder is then checked
before ``build``), or a function of what ``build`` returned (the weights' and the data's digests). The report is
any object with ``to_dict()`` and ``to_markdown()``; its ``files``, ``wall_time_s``, ``environment`` and
``config`` attributes, where it has them, are filled in here (otherwise they go into ``report.json`` beside its own
fields). ``work`` may return None (ranks > 0 of a training run): nothing is written then.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from robustlab.distributed import (
    Shard,
    barrier,
    broadcast_object,
    current_shard,
    finish,
    init_distributed,
    shard_device,
)
from robustlab.io import atomic_torch_save, environment, write_report
from robustlab.reports.html import HTML_FILE, write_html
from robustlab.runs import RunFolder, check_not_in_run, check_writable_file

REPORT_FILES = ("report.json", "report.md", HTML_FILE)  # what every run writes into its folder
Built = TypeVar("Built")
Report = TypeVar("Report")


@dataclass
class Run:
    """Where and on what a run happens, handed to a kind's ``build`` and ``work``."""

    kind: str
    device: torch.device
    shard: Shard = field(default_factory=Shard)
    command_line: str | None = None
    export: Path | None = None  # the user's extra output file (--save-adv, --export), checked writable
    folder: RunFolder | None = None  # the run folder once taken (None: a run without --out)
    started: float = field(default_factory=time.time)

    @property
    def path(self) -> Path | None:
        """Where the run writes its files: ``out``, or the staging folder of a run that replaces another."""
        return self.folder.path if self.folder is not None else None

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files (it has a folder and is rank 0)."""
        return self.folder is not None and self.shard.is_main

    def final(self, value: Any) -> Any:
        """Paths (a path, or a dict or list of them) as they will be once the run has finished (no staging)."""
        return self.folder.final(value) if self.folder is not None else value

    def save_export(self, obj: Any) -> str:
        """Save ``obj`` to the user's extra output file (inside a staging folder while there is one)."""
        assert self.export is not None, "execute(export=...) names the file"
        atomic_torch_save(obj, self.folder.inside(self.export) if self.folder is not None else self.export)
        return str(self.export)


def execute(
    kind: str,
    build: Callable[[Run], Built],
    work: Callable[[Run, Built], Report],
    out: str | os.PathLike | None = None,
    *,
    fingerprint: dict[str, Any] | Callable[[Built], dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    resumable: bool = True,
    scratch: tuple[str, ...] = (),
    distributed: bool = False,
    export: tuple[str, str | os.PathLike | None, tuple[str, ...]] | None = None,
    device: str | torch.device | None = None,
    command_line: str | None = None,
) -> Report:
    """Run ``work(run, build(run))`` as a ``kind`` run in the folder ``out`` (None: no folder) and write its report.

    ``config`` is what report.json records as the run's settings; ``resumable``/``scratch`` are the folder's
    (:class:`~robustlab.runs.RunFolder`); ``distributed`` joins torchrun's process group (every rank runs ``build``
    and ``work``, rank 0 writes); ``export`` is ``(flag, path, names the kind writes into out)`` of the user's extra
    output file, refused before any work when it is not writable or would take a run file's place.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    joined = distributed and not current_shard().distributed  # a caller's own process group is left alone
    shard = init_distributed(device) if distributed else Shard()
    try:
        run = Run(kind, shard_device(device, shard), shard, command_line)
        options = {"resume": resume, "overwrite": overwrite, "resumable": resumable, "scratch": scratch}
        known = not callable(fingerprint)  # known before anything loads: the folder is checked first
        folder = _folder(run, out, fingerprint, **options) if known else None  # type: ignore[arg-type]
        if folder is not None:  # a busy folder, or one holding a run, is refused before the models load
            folder.precheck()
        if export is not None and export[1] is not None:
            flag, path, writes = export
            check_not_in_run(path, out, flag, (*REPORT_FILES, *writes))
            run.export = check_writable_file(path, flag)
        built = build(run)
        if not known:  # a fingerprint of what was built (weights, data digests)
            folder = _folder(run, out, fingerprint(built), **options)  # type: ignore[misc,operator]
        with folder if folder is not None else contextlib.nullcontext():
            run.folder = folder
            report = work(run, built)
            if report is not None:
                _record(run, report, config)
            barrier(shard)
            return report
    finally:
        if joined:
            finish(shard)


def _folder(run: Run, out: str | os.PathLike | None, fingerprint: dict | None, **options: Any) -> RunFolder | None:
    """The run folder ``out`` (None without one), sharing rank 0's choices under torchrun."""
    if out is None:
        return None
    shard = run.shard
    return RunFolder(out, run.kind, fingerprint or {}, is_main=shard.is_main, barrier=lambda: barrier(shard),
                     share=lambda value: broadcast_object(value, shard), **options)  # fmt: skip


def _record(run: Run, report: Any, config: dict[str, Any] | None) -> None:
    """Stamp the wall time, environment and config on ``report``; on rank 0 with a folder, write report.json,
    report.md and report.html, the report's ``files`` naming where they will be once the run has finished."""
    stamp: dict[str, Any] = {"wall_time_s": round(time.time() - run.started, 3),
                             "environment": environment(run.command_line)}  # fmt: skip
    if config is not None:
        stamp["config"] = config
    kept = {k: v for k, v in stamp.items() if hasattr(report, k)}
    for name, value in kept.items():
        setattr(report, name, value)
    if not run.writes:
        return
    path = run.path
    assert path is not None
    if isinstance(getattr(report, "files", None), dict):
        names = {"json": path / "report.json", "markdown": path / "report.md", "html": path / HTML_FILE}
        report.files = run.final({**report.files, **{k: str(v) for k, v in names.items()}})
    markdown = report.to_markdown()
    others = {k: v for k, v in stamp.items() if k not in kept}
    write_report(path, {**report.to_dict(), **others}, markdown if markdown.endswith("\n") else markdown + "\n")
    write_html(path)


__all__ = ["REPORT_FILES", "Run", "execute"]
