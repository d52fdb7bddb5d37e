"""A run that replaces an earlier one (``overwrite``) builds in a staging folder beside ``OUT`` and takes its place
when it has finished, in one atomic exchange of the two folders; then the earlier run's files are deleted."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import secrets
import shutil
from pathlib import Path

from robustlab.errors import RobustlabError
from robustlab.io import DIGESTS_FILE, RUN_FILE
from robustlab.run_files import _TEMP_FILE, LOCK_FILE, run_files

log = logging.getLogger("robustlab.runs")  # the run folder's messages keep the name they are logged under


def exchange(a: Path, b: Path) -> None:
    """Swap two folders in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere three renames)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(a))
    swap = a.with_name(f"{a.name}.swap-{secrets.token_hex(6)}")
    os.rename(a, swap)
    os.rename(b, a)
    os.rename(swap, b)


class RunStaging:
    """The staging methods of :class:`robustlab.runs.RunFolder` (``out``: the run folder; ``path``: where the run
    writes; ``staging``: whether that is a staging folder; ``_locks``: the lock files held)."""

    out: Path
    path: Path
    staging: bool
    _locks: list[tuple[int, Path]]

    def _replace(self) -> None:
        """The staging folder takes ``out``'s place in one step; then the earlier run's files are deleted."""
        target = Path(os.path.realpath(self.out))
        here = Path(os.path.realpath(os.getcwd()))
        if here == target or target in here.parents:  # the folder this process stands in keeps its identity
            earlier = self._move_entries(target)
        else:
            exchange(self.path, target)
            # each lock file moved with its folder: out's lock is now the staging folder's (still held)
            self._locks = [(fd, target / LOCK_FILE if p.parent == self.path else self.path / LOCK_FILE)
                           for fd, p in self._locks]  # fmt: skip
            earlier = self.path
        self.path, self.staging = self.out, False
        self._remove_run(earlier)

    def _move_entries(self, target: Path) -> Path:
        """``out`` is (or holds) the current folder: instead of swapping folders, the earlier run's entries move to
        a folder beside it and the staging folder's entries into it, one rename each; returns the earlier run."""
        earlier = target.parent / f"{target.name}.replaced-{secrets.token_hex(6)}"
        earlier.mkdir()
        for entry in sorted(target.iterdir()):
            if entry.name != LOCK_FILE:
                os.rename(entry, earlier / entry.name)
        for entry in sorted(self.path.iterdir()):
            if entry.name != LOCK_FILE:
                os.rename(entry, target / entry.name)
        staging_lock = self.path / LOCK_FILE
        for fd, path in [lock for lock in self._locks if lock[1] == staging_lock]:
            staging_lock.unlink(missing_ok=True)
            os.close(fd)
            self._locks.remove((fd, path))
        self.path.rmdir()
        return earlier

    def _remove_run(self, folder: Path) -> None:
        """Delete the files the run in ``folder`` wrote, then the folder; anything else there is kept (renamed)."""
        files, folders = run_files(folder)
        for name in folders:
            shutil.rmtree(folder / name, ignore_errors=True)
        for name in [*files, RUN_FILE, DIGESTS_FILE]:
            entry = folder / name
            if entry.is_file() or entry.is_symlink():
                entry.unlink()
        for root, dirs, names in os.walk(folder, topdown=False):
            for name in names:
                if _TEMP_FILE.fullmatch(name):
                    (Path(root) / name).unlink()
            for name in dirs:
                with_content = Path(root) / name
                if not with_content.is_symlink() and not any(with_content.iterdir()):
                    with_content.rmdir()
        left = {e.name for e in folder.iterdir()} - {LOCK_FILE}
        if not left:
            (folder / LOCK_FILE).unlink(missing_ok=True)  # still held: the lock is released when closed
            folder.rmdir()
            return
        kept = folder.with_name(f"{self.out.name}.previous-{secrets.token_hex(6)}")
        os.rename(folder, kept)
        self._locks = [(fd, kept / LOCK_FILE if p.parent == folder else p) for fd, p in self._locks]
        log.warning("%s held files its run did not write (%s); they are kept in %s", self.out, sorted(left)[0], kept)

    # ------------------------------------------------------------------------------------------ staging

    def _make_staging(self) -> Path:
        """An empty folder beside ``out`` (same file system, so it can take out's place), locked by this run."""
        target = Path(os.path.realpath(self.out))
        while True:
            staging = target.parent / f"{target.name}.staging-{secrets.token_hex(6)}"
            try:
                staging.mkdir()
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise RobustlabError(
                    f"--overwrite builds the new run beside {self.out} and replaces the earlier one when it has "
                    f"finished, but {str(target.parent)!r} is not writable ({exc.strerror}); choose another --out"
                ) from None
        self._lock(staging / LOCK_FILE)
        return staging

    def _remove_stale_staging(self) -> None:
        """Staging folders of runs on ``out`` that were killed (no run holds their lock: we hold out's)."""
        target = Path(os.path.realpath(self.out))
        pattern = re.compile(re.escape(target.name) + r"\.staging-[0-9a-f]{12}")
        for entry in target.parent.iterdir():
            if not pattern.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir():
                continue
            try:
                self._lock(entry / LOCK_FILE)
            except RobustlabError:
                continue  # alive (or not robustlab's): left alone
            fd, _ = self._locks.pop()
            shutil.rmtree(entry, ignore_errors=True)
            os.close(fd)
            log.info("removed %s, the staging folder of a run that was killed", entry)
