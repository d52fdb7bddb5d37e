"""Which files a run folder's run wrote: its manifest (in ``run.json``, with each file's SHA-256, once finished) and
its journal (while it is written, or killed); what else a folder holds is foreign, and never deleted by a run."""

from __future__ import annotations

import os
import re
from pathlib import Path

from robustlab.io import DIGESTS_FILE, RUN_FILE, check_digest, read_journal, read_manifest

LOCK_FILE = ".lock"
_OWN = {RUN_FILE, LOCK_FILE, DIGESTS_FILE}  # the run folder's own bookkeeping, never a foreign file
_TEMP_FILE = re.compile(r"\..+\.[0-9a-f]{12}")  # an atomic write's temporary file, left by a kill


def run_files(folder: str | os.PathLike) -> tuple[set[str], set[str]]:
    """The files and folders (relative paths) the run in ``folder`` wrote: ``run.json``'s manifest of a finished
    run and the journal of one still written (or killed)."""
    journal = read_journal(folder)
    files = set(read_manifest(folder) or {}) | {k for k in journal if not k.endswith("/")}
    return files, {k.rstrip("/") for k in journal if k.endswith("/")}


def foreign_file(folder: str | os.PathLike) -> str | None:
    """The first entry of ``folder`` (relative path, top-down) that its run did not write, else None."""
    folder = Path(folder)
    files, folders = run_files(folder)
    parents = {str(Path(f).parent.as_posix()) for f in files}
    parents |= {p.as_posix() for f in files for p in Path(f).parents}

    def owned(rel: str, is_dir: bool) -> bool:
        if rel in _OWN or rel in files or _TEMP_FILE.fullmatch(Path(rel).name):
            return True
        if any(rel == f or rel.startswith(f + "/") for f in folders):
            return True
        return is_dir and rel in parents

    for root, dirs, names in os.walk(folder):
        dirs.sort()
        base = Path(root).relative_to(folder)
        for name, is_dir in sorted([(d, True) for d in dirs] + [(n, False) for n in names]):
            rel = (base / name).as_posix()
            if not owned(rel, is_dir and not (Path(root) / name).is_symlink()):
                return rel
    return None


def verify(folder: str | os.PathLike) -> None:
    """Refuse (one line) a finished run folder holding a file that no longer matches the SHA-256 its run recorded
    in ``run.json``'s manifest: for readers of a finished run (``robustlab report``, ``--model runs/NAME``)."""
    for name in sorted(read_manifest(folder) or {}):
        if (Path(folder) / name).is_file():
            check_digest(Path(folder) / name)
