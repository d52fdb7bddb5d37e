"""Files that survive a kill (atomic writes), JSON reports and the run environment.

Every file robustlab writes into a run folder goes through :func:`atomic_write_bytes` (or an append opened by
:func:`open_no_follow`). While a run folder is being written (:func:`track_run`), each write also appends the
file's SHA-256 to the folder's journal (``.files.jsonl``), before the file takes its name; the finished run folds it
into ``run.json``'s manifest. :func:`check_digest` refuses a file that matches none of the digests its run recorded
(a flipped bit, an edit): :func:`robustlab.safe_load.safe_load` calls it for every file it reads.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import platform
import secrets
import stat
from pathlib import Path
from typing import Any

import torch

from robustlab.errors import CheckpointError, RobustlabError


class ChangedFileError(CheckpointError):
    """A file of a run folder no longer matches the SHA-256 its run recorded when writing it."""


RUN_FILE = "run.json"  # a run folder's record: kind, fingerprint and, once finished, the manifest of its files
DIGESTS_FILE = ".files.jsonl"  # a run folder's journal while it is written: one {"file", "sha256"} line per write
_TRACKED: set[Path] = set()  # the run folders this process is writing (registered by robustlab.runs.RunFolder)
_JOURNALS: dict[Path, tuple[tuple[int, int], int, dict[str, list[str | None]]]] = {}  # (file id, bytes read, entries)
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def environment(command: str | None = None) -> dict[str, Any]:
    """Versions and hardware, for reports; ``command`` is the command line the CLI was given (library code never
    reads ``sys.argv``: a caller that is not the CLI passes its own description, or nothing)."""
    import torchvision

    from robustlab import __version__

    return {
        "robustlab": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": command,
    }


def disk_full(exc: OSError, path: str | os.PathLike, needed: int | None = None) -> RobustlabError | None:
    """The one-line error for a full disk or an exhausted quota while writing ``path`` (None for other errors)."""
    if exc.errno not in _DISK_FULL:
        return None
    path = Path(path)
    size = f" ({needed / 1e6:.1f} MB)" if needed is not None and needed >= 1e5 else ""
    size = f" ({needed} bytes)" if needed is not None and not size else size
    why = "no space left on the device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
    return RobustlabError(
        f"{why}: cannot write {path.name}{size} into {str(path.parent)!r}; free space there or choose another --out"
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that a kill leaves either the old or the new file, never half of one; inside a run folder
    being written, its digest is journaled first. A full disk is one :class:`RobustlabError` line."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:  # os.open with mode 0o666 lets the kernel apply the umask (mkstemp would make it 0600)
            tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
                break
            except FileExistsError:
                continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        digest = hashlib.sha256(data).hexdigest()
        tracked = record_file(path, digest)  # before the rename: a kill leaves a known digest
        os.replace(tmp, path)
        if not tracked:
            _note_in_manifest(path, digest)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        full = disk_full(exc, path, len(data)) if isinstance(exc, OSError) else None
        if full is not None:
            raise full from None
        raise


# ---------------------------------------------------------------------------------------- digests of run files


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def track_run(folder: str | os.PathLike) -> None:
    """Journal the digest of every file written under ``folder`` from now on (a run folder being written)."""
    _TRACKED.add(Path(os.path.abspath(folder)))


def untrack_run(folder: str | os.PathLike) -> None:
    """Stop journaling writes under ``folder`` (its run finished or failed)."""
    folder = Path(os.path.abspath(folder))
    _TRACKED.discard(folder)
    _JOURNALS.pop(folder / DIGESTS_FILE, None)


def _tracked_run(path: Path) -> Path | None:
    path = Path(os.path.abspath(path))
    return next((p for p in path.parents if p in _TRACKED), None)


def record_file(path: str | os.PathLike, digest: str | None, folder: bool = False) -> bool:
    """Append ``path``'s digest to its run folder's journal; False (nothing done) outside a run folder being
    written. ``digest`` None marks a file the run owns but appends to (a log), ``folder`` a folder it owns."""
    run = _tracked_run(Path(path))
    if run is None:
        return False
    entry = {"file": Path(os.path.abspath(path)).relative_to(run).as_posix(), "sha256": digest}
    line = (json.dumps({**entry, **({"folder": True} if folder else {})}) + "\n").encode()
    fd = open_no_follow(run / DIGESTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what="the run's file journal")
    try:
        os.write(fd, line)  # one small O_APPEND write: lines of several ranks never interleave
    except OSError as exc:
        full = disk_full(exc, run / DIGESTS_FILE, len(line))
        if full is not None:
            raise full from None
        raise
    finally:
        os.close(fd)
    return True


def _note_in_manifest(path: Path, digest: str) -> None:
    """A file of a finished run that robustlab rewrites (``robustlab report`` redoing report.md) stays one of the
    run's files, with its new digest in ``run.json``'s manifest (a file the run did not write is not claimed)."""
    path = Path(os.path.abspath(path))
    if path.name == RUN_FILE:
        return
    for folder in list(path.parents)[:4]:
        if not (folder / RUN_FILE).is_file():
            continue
        try:
            saved = json.loads((folder / RUN_FILE).read_text())
        except (OSError, ValueError):
            return
        name = path.relative_to(folder).as_posix()
        files = saved.get("files") if isinstance(saved, dict) else None
        if isinstance(files, dict) and name in files and files[name] != digest:  # a new file is not the run's
            files[name] = digest
            write_json(folder / RUN_FILE, saved)
        return


def read_journal(folder: str | os.PathLike) -> dict[str, list[str | None]]:
    """``{relative path: [digest, ...]}`` of a run folder's journal, in write order (a folder entry ends in "/");
    read incrementally, since a journal only grows while its run is written."""
    path = Path(os.path.abspath(folder)) / DIGESTS_FILE
    try:
        info = path.stat()
    except OSError:
        return {}
    size, file_id = info.st_size, (info.st_dev, info.st_ino)
    known, offset, entries = _JOURNALS.get(path, (file_id, 0, {}))
    if size < offset or known != file_id:  # another run's journal now: read it afresh
        offset, entries = 0, {}
    if size > offset:
        with open(path, "rb") as f:
            f.seek(offset)
            tail = f.read(size - offset)
        complete = tail[: tail.rfind(b"\n") + 1]  # a line cut by a kill is not an entry
        for raw in complete.splitlines():
            try:
                item = json.loads(raw.decode())
                name = str(item["file"]) + ("/" if item.get("folder") else "")
                entries.setdefault(name, []).append(item.get("sha256"))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        offset += len(complete)
        _JOURNALS[path] = (file_id, offset, entries)
    return entries


def read_manifest(folder: str | os.PathLike) -> dict[str, str] | None:
    """``{relative path: sha256}`` that a finished run recorded in ``run.json`` (None: none recorded)."""
    try:
        saved = json.loads((Path(folder) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    files = saved.get("files") if isinstance(saved, dict) else None
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else None


def recorded_digests(path: str | os.PathLike) -> list[str | None] | None:
    """The digests ``path``'s run recorded for it (manifest, then journal, in order); None when no run folder
    around it records the file (a file of the user's, or of an older robustlab)."""
    path = Path(os.path.abspath(path))
    for folder in list(path.parents)[:4]:  # OUT/partial/eps-0.1/batch00000.pt is 3 levels down
        if not (folder / RUN_FILE).is_file() and not (folder / DIGESTS_FILE).is_file():
            continue
        name = path.relative_to(folder).as_posix()
        manifest = read_manifest(folder) or {}
        found = [manifest[name]] if name in manifest else []
        found += read_journal(folder).get(name, [])
        return found or None
    return None


def check_digest(path: str | os.PathLike, what: str = "file") -> None:
    """Refuse (one line) a file of a run folder that matches none of the SHA-256 digests its run recorded for it:
    it changed on disk after robustlab wrote it (a flipped bit, an edit). A file no run records passes; so does a
    log the run appends to (its last entry records no digest)."""
    recorded = recorded_digests(path)
    if not recorded or recorded[-1] is None:
        return
    if file_digest(path) not in recorded:
        raise ChangedFileError(
            f"{what} {str(path)!r} does not match the SHA-256 its run recorded when writing it (corrupt, or changed "
            "on disk since); restore it, or run again with --overwrite or another --out"
        )


def open_no_follow(path: str | os.PathLike, flags: int, what: str = "file") -> int:
    """``os.open`` that never follows a symbolic link and opens only a regular file with one name: a link, a
    hard link to another file, a FIFO or a folder planted at ``path`` is refused before one byte is written."""
    path = Path(path)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if path.is_symlink():
            raise RobustlabError(
                f"{what} {str(path)!r} is a symbolic link; robustlab never writes through a link: remove it"
            ) from None
        raise RobustlabError(f"{what} {str(path)!r} cannot be opened ({exc.strerror}); remove it") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        kind = "not a regular file" if not stat.S_ISREG(info.st_mode) else "a hard link to another file"
        raise RobustlabError(f"{what} {str(path)!r} is {kind}; robustlab does not write into it: remove it")
    return fd


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table (also readable in a terminal)."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_report(out: str | os.PathLike, data: dict[str, Any], markdown: str) -> dict[str, str]:
    """The one report writer: ``OUT/report.json`` (``data``) and ``OUT/report.md`` (``markdown``), atomically;
    returns their paths. Plots and HTML are written beside them by their owners."""
    out = Path(out)
    files = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    atomic_write_bytes(out / "report.md", markdown.encode())
    write_json(out / "report.json", data)
    return files
