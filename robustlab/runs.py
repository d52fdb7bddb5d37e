"""Run folders: the one place that decides whether a run may write into ``--out``, and where.

A run folder holds one run. While a run is alive it holds an OS-level lock on ``OUT/.lock`` (released by the
kernel even when the process is killed; the file is removed when the run ends), so a second run on the same folder
stops at once, naming the holder's PID. ``OUT/run.json`` records what kind of run wrote the folder, every setting
that changes its result (the fingerprint) and, once the run has finished, the manifest of the files it wrote with
their SHA-256: ``resume`` continues only a run with the same fingerprint; a folder holding a run is never written
over without ``overwrite``, and ``overwrite`` removes only the files the earlier run's manifest lists.

A fresh run into a folder holding no run writes there directly (a killed run can be resumed). A run that replaces
an earlier one (``overwrite``) builds into a staging folder beside ``OUT`` (``NAME.staging-<hex>``) and takes its
place only when it has finished (an atomic exchange of the two folders), then deletes the earlier run's files: a
failed run removes its staging folder and a killed one leaves it behind (the next run on ``OUT`` removes it), so the
earlier run stays exactly as it was either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError
from robustlab.io import DIGESTS_FILE, RUN_FILE, check_digest, file_digest, track_run, untrack_run, write_json
from robustlab.run_checks import RunChecks
from robustlab.run_files import _OWN, LOCK_FILE, run_files
from robustlab.run_lock import RunLock
from robustlab.run_staging import RunStaging


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (tuples become lists, paths and other objects strings), for comparing."""
    return json.loads(json.dumps(value, default=str))


def text_digest(text: str) -> str:
    """SHA-256 of a string: the key of a cached result, from everything it depends on."""
    return hashlib.sha256(text.encode()).hexdigest()


def check_writable_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a folder robustlab can create and write into, or one error line naming the fix."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RobustlabError(f"{flag} {str(path)!r} is a file, not a folder; choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RobustlabError(f"{flag} {str(path)!r} cannot be created ({reason}); choose another folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RobustlabError(f"{flag} {str(path)!r} is not writable; choose a folder you can write to")
    return path


def check_writable_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as a file robustlab can write (checked before the work starts), or one error line."""
    path = Path(path)
    if path.is_dir():
        raise RobustlabError(f"{flag} {str(path)!r} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise RobustlabError(f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RobustlabError(f"{flag} {str(path)!r}: cannot create {str(parent)!r} ({exc.strerror})") from None
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise RobustlabError(f"{flag} {str(path)!r} is not writable; choose another file")
    return path


def check_not_in_run(
    path: str | os.PathLike, out: str | os.PathLike | RunFolder | None, flag: str, writes: tuple[str, ...] = ()
) -> None:
    """Refuse (one line) a file the user names (``--save-adv``, ``--export``) that is the run folder ``out`` itself
    or one of the files the run writes there (``writes``, ``run.json``, ...): a file inside ``out`` under another
    name is fine (it becomes one of the run's files)."""
    if out is None:
        return
    out = out.out if isinstance(out, RunFolder) else Path(out)
    target, folder = os.path.abspath(path), os.path.abspath(out)
    if target == folder:
        raise RobustlabError(
            f"{flag} {str(path)!r} is the run folder --out itself; give a file name, e.g. {Path(out) / 'adv.pt'}"
        )
    if target.startswith(folder + os.sep):
        name = Path(target).relative_to(folder).as_posix()
        if name in _OWN or name in writes or name.split("/")[0] in writes:
            raise RobustlabError(
                f"{flag} {str(path)!r} is a file the run writes itself into --out ({name}); choose another name"
            )


def check_no_links(folder: str | os.PathLike) -> None:
    """Refuse a run folder holding a symbolic link anywhere inside (robustlab never makes one): a write into
    ``OUT/partial/...`` or ``OUT/tensorboard`` would otherwise land wherever the link points."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in [*dirs, *files]:
            entry = Path(root) / name
            if entry.is_symlink():
                raise RobustlabError(
                    f"{entry} is a symbolic link; robustlab never writes through a link in a run folder: remove "
                    "it or choose another --out"
                )


class RunFolder(RunChecks, RunStaging, RunLock):
    """``with RunFolder(out, "eval", fingerprint, resume=..., overwrite=...) as run:`` -- locked for the block;
    the run writes into ``run.path`` (``out`` itself, or the staging folder of a run that replaces another).

    On entry: the folder is created (or refused: a file, not writable), locked (or refused: another run holds
    it), and checked: a fresh run needs a folder holding no run, or ``overwrite`` (refused when the folder holds a
    file its run did not write, naming it); ``resume`` needs the same ``kind`` and fingerprint (the error names the
    settings that differ). ``run.resumed`` says whether there was a previous run to continue; a kind of run with no
    partial state (``resumable=False``: attack, transfer) is never told to ``--resume``.

    On a successful exit the ``scratch`` entries (e.g. eval's ``partial``: they only serve the resume of an
    unfinished run) are removed, ``run.json`` gets the manifest of the files the run wrote, a staging folder takes
    ``out``'s place and the earlier run's files are deleted; the lock file goes. A fresh run that fails leaves
    nothing behind unless it made progress a ``--resume`` can continue (``resume_state`` entries); a replacing run
    that fails removes its staging folder. Under DDP only rank 0 (``is_main``) locks and writes; every rank checks,
    so every rank fails alike, and ``share`` (a broadcast from rank 0) tells every rank where to write.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        kind: str,
        fingerprint: dict[str, Any],
        *,
        resume: bool = False,
        overwrite: bool = False,
        resumable: bool = True,
        is_main: bool = True,
        barrier: Callable[[], None] | None = None,
        share: Callable[[Any], Any] | None = None,
        scratch: tuple[str, ...] = (),
        resume_state: tuple[str, ...] = ("last.pt", "partial"),
    ) -> None:
        if resume and overwrite:
            raise RobustlabError("--resume and --overwrite contradict each other; give one of them")
        self.out = Path(path)
        self.path = self.out  # where the run writes: out, or its staging folder
        self.kind, self.fingerprint = kind, jsonable(fingerprint)
        self.resume, self.overwrite, self.resumable, self.is_main = resume, overwrite, resumable, is_main
        self.scratch, self.resume_state = tuple(scratch), tuple(resume_state)
        self.resumed = self.staging = self._fresh = self._created = False
        self._barrier = barrier or (lambda: None)
        self._share = share or (lambda value: value)
        self._locks: list[tuple[int, Path]] = []  # (descriptor, path) of each lock file held
        self._before: set[str] = set()

    # ------------------------------------------------------------------------------------------ entering

    def __enter__(self) -> RunFolder:
        self._created = not self.out.exists()
        check_writable_folder(self.out)
        staging = None
        try:
            if self.is_main:
                self._lock(self.out / LOCK_FILE)
            check_no_links(self.out)
            action = self._check()  # every rank reads and judges before rank 0 writes anything
            self._barrier()
            if self.is_main:
                self._before = {e.name for e in self.out.iterdir()} - {LOCK_FILE}
                self._remove_stale_staging()
                if action == "fresh":
                    (self.out / DIGESTS_FILE).unlink(missing_ok=True)  # a journal without a run claims nothing
                    self._before.discard(DIGESTS_FILE)
                if action == "overwrite":
                    staging = self._make_staging()
            shared = self._share(None if staging is None else str(staging))
            self.path, self.staging = (Path(shared), True) if shared is not None else (self.out, False)
            track_run(self.path)
            if self.is_main and action != "resume":
                write_json(self.path / RUN_FILE, {"kind": self.kind, "fingerprint": self.fingerprint})
            self._barrier()
        except BaseException:
            untrack_run(self.path)
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            self.path = self.out
            self._unlock()
            if self.is_main and self._created:  # refused at once: the folder it made goes too
                with contextlib.suppress(OSError):
                    self.out.rmdir()
            raise
        self.resumed = action == "resume"
        self._fresh = action != "resume"
        return self

    def precheck(self) -> None:
        """Entering's refusals (not writable, in use, holding a run without ``overwrite``/``resume``, a file
        ``overwrite`` may not remove) now, without taking or changing the folder: for work that loads models before
        it enters, so a bad model is refused before anything is written, and a busy folder before the model loads."""
        if not self.out.exists():
            return  # entering creates it
        check_writable_folder(self.out)
        if self.is_main and (self.out / LOCK_FILE).exists():
            self._lock(self.out / LOCK_FILE)
            self._unlock()
        check_no_links(self.out)
        self._check()

    def final(self, value: Any) -> Any:
        """``value`` (a path, or a dict or list of them) with the staging folder replaced by ``out``: the paths a
        report records and returns are where its files will be once the run has finished."""
        if isinstance(value, dict):
            return {k: self.final(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.final(v) for v in value]
        if isinstance(value, (str, Path)) and self.staging:
            path = Path(value)
            if path == self.path or self.path in path.parents:
                moved = self.out / path.relative_to(self.path)
                return str(moved) if isinstance(value, str) else moved
        return value

    def inside(self, path: str | os.PathLike) -> Path:
        """Where the run writes a file the user named inside ``out`` (``--save-adv OUT/adv.pt``): in the staging
        folder while there is one, so it arrives with the run."""
        path = Path(path)
        if self.staging and os.path.abspath(path).startswith(os.path.abspath(self.out) + os.sep):
            return self.path / Path(os.path.abspath(path)).relative_to(os.path.abspath(self.out))
        return path

    # ------------------------------------------------------------------------------------------ leaving

    def __exit__(self, exc_type: object, *exc: object) -> None:
        untrack_run(self.path)
        try:
            if self.is_main and exc_type is None:
                self._finish()
            elif self.is_main and self.staging:
                shutil.rmtree(self.path, ignore_errors=True)  # the earlier run in out stays as it was
                self.path = self.out
            elif self.is_main and self._fresh:
                self._forget_failed_start()
        finally:
            self._unlock()

    def _finish(self) -> None:
        """Remove the scratch entries, write the manifest and, for a staging folder, take ``out``'s place."""
        for name in self.scratch:
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()
        files, folders = run_files(self.path)
        for name in folders:
            for root, _, names in os.walk(self.path / name):
                files |= {(Path(root) / n).relative_to(self.path).as_posix() for n in names}
        manifest = {}
        for name in sorted(files - _OWN):
            entry = self.path / name
            if entry.is_file() and not entry.is_symlink():
                manifest[name] = file_digest(entry)
        write_json(self.path / RUN_FILE, {"kind": self.kind, "fingerprint": self.fingerprint, "files": manifest})
        (self.path / DIGESTS_FILE).unlink(missing_ok=True)
        if self.staging:
            self._replace()

    def _forget_failed_start(self) -> None:
        """A fresh run that failed before it made progress a ``--resume`` could continue leaves nothing behind (a
        corrected command would otherwise find the folder holding a run)."""
        if any((self.out / name).exists() for name in self.resume_state):
            return
        for entry in self.out.iterdir():
            if entry.name in self._before or entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        if self._created and {e.name for e in self.out.iterdir()} <= {LOCK_FILE}:
            self._unlock()
            with contextlib.suppress(OSError):
                self.out.rmdir()


__all__ = [
    "LOCK_FILE",
    "RUN_FILE",
    "RunFolder",
    "check_digest",
    "check_no_links",
    "check_not_in_run",
    "check_writable_file",
    "check_writable_folder",
    "file_digest",
    "jsonable",
    "text_digest",
]
