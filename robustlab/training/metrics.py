"""Training logs a user can follow: per-step and per-epoch scalars in ``OUT/metrics.jsonl`` (always) and, with
``--tensorboard``, TensorBoard event files in ``OUT/tensorboard`` (through ``torch.utils.tensorboard``).

Rank 0 only. Resume-safe: a resumed run first drops every record after the checkpoint's global step (the steps it
is about to train again), and TensorBoard's ``purge_step`` hides the same events, so no step appears twice.
Every record carries the global optimizer step; TensorBoard plots steps and epochs on that one axis.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError
from robustlab.io import atomic_write_bytes, check_digest, disk_full, open_no_follow, record_file

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _scalars(values: dict[str, Any]) -> dict[str, float]:
    """The finite-or-not numbers of ``values`` (booleans as 0/1); strings and lists are left out."""
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, str)}


def read_metrics(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``OUT/metrics.jsonl`` (``{"kind": "step" | "monitor" | "epoch", "step": ..., ...}``), up to
    the first line that is not a complete record (cut by a kill, or damaged: not UTF-8, not JSON); a finished run's
    log that no longer matches its recorded digest is refused."""
    path = Path(out) / METRICS_FILE
    if not path.is_file():
        return []
    check_digest(path, "the metrics log")
    records = []
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError is a ValueError too
            break  # nothing after a cut or damaged line is trusted
        if not isinstance(record, dict):
            break
        records.append(record)
    return records


class MetricsLogger:
    """Writes a training run's scalars; :meth:`step`, :meth:`monitor` and :meth:`epoch` add one record each.

    ``resume_step`` (the checkpoint's global step) keeps only the records up to it; None starts the file afresh.
    """

    def __init__(self, out: str | os.PathLike, tensorboard: bool = False, resume_step: int | None = None) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        board = self.out / TENSORBOARD_DIR
        writer_class = None
        if tensorboard:  # refused before anything is written: a run that never started leaves nothing behind
            if board.exists() and not board.is_dir():
                raise RobustlabError(f"{board} is a file, not a folder; remove it or drop --tensorboard")
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RobustlabError(
                    "--tensorboard needs the tensorboard package; pip install 'robustlab[tensorboard]'"
                ) from None
            writer_class = SummaryWriter
        kept = [r for r in read_metrics(self.out) if r.get("step", 0) <= resume_step] if resume_step is not None else []
        atomic_write_bytes(self.out / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept).encode())
        record_file(self.out / METRICS_FILE, None)  # the run's own file, appended to: checked once finished
        fd = open_no_follow(self.out / METRICS_FILE, os.O_WRONLY | os.O_APPEND, what="the metrics log")
        self._file = os.fdopen(fd, "a", encoding="utf-8")  # closed by close()
        self._writer = None
        if writer_class is not None:
            record_file(board, None, folder=True)  # TensorBoard writes its event files itself
            purge = None if resume_step is None else resume_step + 1  # events after the checkpoint are hidden
            self._writer = writer_class(log_dir=str(board), purge_step=purge)

    def _write(self, kind: str, step: int, values: dict[str, Any], epoch: int | None = None) -> None:
        scalars = _scalars(values)
        record = {"kind": kind, "step": int(step), **({"epoch": epoch} if epoch is not None else {})}
        record.update({k: v if math.isfinite(v) else str(v) for k, v in scalars.items()})
        line = json.dumps(record) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            full = disk_full(exc, self.out / METRICS_FILE, len(line))
            if full is not None:
                raise full from None
            raise
        if self._writer is not None:
            for name, value in scalars.items():
                self._writer.add_scalar(f"{kind}/{name}", value, global_step=int(step))

    def step(self, step: int, values: dict[str, Any]) -> None:
        """One optimizer step's numbers (loss, learning rate, the method's own statistics)."""
        self._write("step", step, values)

    def monitor(self, step: int, values: dict[str, Any]) -> None:
        """A step-level monitor's numbers (e.g. the catastrophic-overfitting monitor's FGSM/PGD accuracy)."""
        if values:
            self._write("monitor", step, values)

    def epoch(self, epoch: int, step: int, values: dict[str, Any]) -> None:
        """An epoch's averages, monitor accuracies, CO flag, kNN accuracy, ... at the epoch's last global step."""
        self._write("epoch", step, {k: v for k, v in values.items() if k != "epoch"}, epoch=epoch)

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def open_metrics(
    out: Path | None, is_main: bool, tensorboard: bool = False, resume_step: int | None = None
) -> MetricsLogger | None:
    """The run's logger on rank 0 with a run folder; None elsewhere (nothing is logged)."""
    return MetricsLogger(out, tensorboard, resume_step) if out is not None and is_main else None


__all__ = ["METRICS_FILE", "TENSORBOARD_DIR", "MetricsLogger", "open_metrics", "read_metrics"]
