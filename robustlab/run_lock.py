"""The lock a live run holds on its run folder (and on its staging folder): an OS-level ``flock`` on ``.lock``,
released by the kernel even when the process is killed; the file names the holder's PID."""

from __future__ import annotations

import os
from pathlib import Path

from robustlab.errors import RobustlabError
from robustlab.io import disk_full, open_no_follow


class RunLock:
    """The lock methods of :class:`robustlab.runs.RunFolder` (``out``: the run folder; ``_locks``: the
    ``(descriptor, path)`` of each lock file held)."""

    out: Path
    _locks: list[tuple[int, Path]]

    # ------------------------------------------------------------------------------------------ the lock

    def _lock(self, path: Path) -> None:
        import fcntl

        while True:
            # a link, hard link, FIFO or folder planted as the lock is refused before anything is written
            fd = open_no_follow(path, os.O_RDWR | os.O_CREAT, what="the lock file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RobustlabError(
                    f"{self.out} is in use by another robustlab run (PID {holder}); wait for it to finish, "
                    "or choose another --out"
                ) from None
            try:  # the run that held it may have removed the file meanwhile: then lock the one that is there now
                if os.path.samestat(os.fstat(fd), os.lstat(path)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self._locks.append((fd, path))
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            self._unlock()
            full = disk_full(exc, path, 16)
            if full is not None:
                raise full from None
            raise

    def _unlock(self) -> None:
        """Remove each lock file while still holding it, then release it (a run that opened the old file finds
        it gone and locks the new one)."""
        while self._locks:
            fd, path = self._locks.pop()
            try:
                if os.path.samestat(os.fstat(fd), os.lstat(path)):
                    path.unlink()
            except OSError:
                pass
            os.close(fd)
