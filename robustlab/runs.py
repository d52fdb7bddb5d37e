"""Run folders: the one place that decides whether a run may write into ``--out``.

A run folder holds one run. While a run is alive it holds an OS-level lock on ``OUT/.lock`` (released by the
kernel even when the process is killed), so a second run on the same folder stops at once, naming the holder's
PID. ``OUT/run.json`` records what kind of run wrote the folder and every setting that changes its result (the
fingerprint): ``resume`` continues only a run with the same fingerprint, and a folder that already holds a run is
never written over without ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError
from robustlab.io import open_no_follow, write_json

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
# files an older robustlab (before run.json) left in a run folder: such a folder holds a run too
_LEGACY_MARKERS = ("last.pt", "partial", "report.json", "results.pt")


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (tuples become lists, paths and other objects strings), for comparing."""
    return json.loads(json.dumps(value, default=str))


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


class RunFolder:
    """``with RunFolder(out, "eval", fingerprint, resume=..., overwrite=...) as run:`` -- locked for the block.

    On entry: the folder is created (or refused: a file, not writable), locked (or refused: another run holds
    it), and checked: a fresh run needs an empty folder or ``overwrite`` (which clears the previous run's files);
    ``resume`` needs the same ``kind`` and fingerprint (the error names the settings that differ). ``run.resumed``
    says whether there was a previous run to continue; a kind of run with no partial state (``resumable=False``:
    attack, transfer) is never told to ``--resume``. Under DDP only rank 0 (``is_main``) locks and writes;
    every rank checks, so every rank fails alike.
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
    ) -> None:
        if resume and overwrite:
            raise RobustlabError("--resume and --overwrite contradict each other; give one of them")
        self.path, self.kind, self.fingerprint = Path(path), kind, jsonable(fingerprint)
        self.resume, self.overwrite, self.resumable, self.is_main = resume, overwrite, resumable, is_main
        self.resumed = self._fresh = self._created = False
        self._barrier = barrier or (lambda: None)
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------------------------------ the lock

    def __enter__(self) -> RunFolder:
        self._created = not self.path.exists()
        check_writable_folder(self.path)
        if self.is_main:
            self._lock()
        try:
            check_no_links(self.path)
            action = self._check()  # every rank reads and judges before rank 0 writes anything
            self._barrier()
            if self.is_main and action == "overwrite":
                self._clear()
            if self.is_main and action != "resume":
                write_json(self.path / RUN_FILE, {"kind": self.kind, "fingerprint": self.fingerprint})
            self._barrier()
        except BaseException:
            self._unlock()
            raise
        self.resumed = action == "resume"
        self._fresh = action != "resume"
        return self

    def precheck(self) -> None:
        """Entering's refusals (not writable, in use, holding a run without ``overwrite``/``resume``) now, without
        taking or changing the folder: for work that loads models before it enters, so a bad model is refused
        before ``overwrite`` clears a previous run, and a busy folder before the model loads."""
        if not self.path.exists():
            return  # entering creates it
        check_writable_folder(self.path)
        if self.is_main and (self.path / LOCK_FILE).exists():
            self._lock()
            self._unlock()
        check_no_links(self.path)
        self._check()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None and self.is_main and self._fresh:
            self._forget_failed_start()
        self._unlock()

    def _forget_failed_start(self) -> None:
        """A fresh run that failed before writing anything leaves no run record behind (a corrected command
        would otherwise find the folder "in use")."""
        if {e.name for e in self.path.iterdir()} <= {RUN_FILE, LOCK_FILE}:
            (self.path / RUN_FILE).unlink(missing_ok=True)
            if self._created:
                (self.path / LOCK_FILE).unlink(missing_ok=True)
                self.path.rmdir()

    def _lock(self) -> None:
        import fcntl

        # a link, hard link, FIFO or folder planted as the lock is refused before anything is written
        fd = open_no_follow(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, what="the lock file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RobustlabError(
                f"{self.path} is in use by another robustlab run (PID {holder}); wait for it to finish, "
                "or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock; the file stays (removing it would race)
            self._lock_fd = None

    # ------------------------------------------------------------------------------------------ the checks

    def saved(self) -> dict[str, Any] | None:
        """The previous run's ``run.json`` (None when the folder holds none)."""
        path = self.path / RUN_FILE
        if not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RobustlabError(
                f"{path} is not valid JSON ({exc}); the folder's run cannot be resumed: use --overwrite or "
                "another --out"
            ) from None
        if not isinstance(saved, dict) or not isinstance(saved.get("fingerprint"), dict):
            raise RobustlabError(f"{path} is not a robustlab run record; use --overwrite or another --out")
        return saved

    def holds_run(self) -> bool:
        return (self.path / RUN_FILE).exists() or any((self.path / m).exists() for m in _LEGACY_MARKERS)

    def _check(self) -> str:
        """``"fresh"``, ``"overwrite"`` or ``"resume"``, or one error line saying why the folder cannot be used."""
        if not self.holds_run():
            if self.resume:
                raise RobustlabError(f"--resume: {self.path} holds no run to continue; drop --resume")
            return "fresh"
        if self.overwrite:
            return "overwrite"
        if not self.resume:
            hint = "continue it with --resume, " if self.resumable else ""
            raise RobustlabError(
                f"{self.path} already holds a run; {hint}replace it with --overwrite, or choose another --out"
            )
        saved = self.saved()
        if saved is None:
            raise RobustlabError(
                f"{self.path} holds a run of an older robustlab without {RUN_FILE}; it cannot be checked for "
                "--resume: use --overwrite or another --out"
            )
        if saved.get("kind") != self.kind:
            raise RobustlabError(
                f"{self.path} holds a '{saved.get('kind')}' run, not '{self.kind}'; choose another --out"
            )
        previous = saved["fingerprint"]
        changed = sorted(k for k in {*previous, *self.fingerprint} if previous.get(k) != self.fingerprint.get(k))
        if changed:
            detail = ", ".join(f"{k} {previous.get(k)!r} -> {self.fingerprint.get(k)!r}" for k in changed[:6])
            raise RobustlabError(
                f"{self.path} holds a run with different {', '.join(changed)} ({detail}); --resume needs the same "
                "arguments, or use --overwrite or another --out"
            )
        return "resume"

    def _clear(self) -> None:
        """Remove what a previous run wrote (everything but the lock we hold)."""
        for entry in self.path.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


__all__ = [
    "RunFolder",
    "check_no_links",
    "check_writable_file",
    "check_writable_folder",
    "file_digest",
    "jsonable",
    "text_digest",
]
