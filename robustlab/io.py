"""Files that survive a kill (atomic writes), JSON reports and the run environment."""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import platform
import secrets
import stat
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from robustlab.errors import CheckpointError


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that a kill leaves either the old or the new file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # os.open with mode 0o666 lets the kernel apply the umask (mkstemp would make it 0600)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_no_follow(path: str | os.PathLike, flags: int, what: str = "file") -> int:
    """``os.open`` that never follows a symbolic link and opens only a regular file with one name: a link, a
    hard link to another file, a FIFO or a folder planted at ``path`` is refused before one byte is written."""
    from robustlab.errors import RobustlabError

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


def safe_load(path: str | os.PathLike, trust: bool = False, what: str = "checkpoint") -> Any:
    """The one ``torch.load`` of robustlab: ``weights_only=True`` (tensors, numbers, strings, lists, dicts) unless
    the user trusts the file; a missing, empty, corrupt or hostile file raises one :class:`CheckpointError` line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist; check the path")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {str(path)!r} is empty (0 bytes); it was not saved completely: save it again")
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the error below says what matters
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # torch raises anything from IndexError to RuntimeError on a damaged file
        found = python_objects_in(path) if isinstance(exc, pickle.UnpicklingError) and not trust else None
        if found:
            raise CheckpointError(
                f"{what} {str(path)!r} holds Python objects ({found}) that safe loading refuses (they could run "
                "code); only if you trust the file, pass --trust-checkpoint (trust_checkpoint=True)"
            ) from None
        raise CheckpointError(f"{what} {str(path)!r} is corrupt or not a PyTorch file ({_first_line(exc)})") from None


def python_objects_in(path: str | os.PathLike) -> str | None:
    """The first global outside PyTorch's safe list that a well-formed pickle in ``path`` would import
    (``"posix.system"``), else None: random bytes or a truncated file are corrupt, not objects to be trusted."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            data = archive.read(names[0]) if names else b""
    except (zipfile.BadZipFile, OSError):
        data = Path(path).read_bytes()
    found, strings = None, []
    try:
        for op, arg, _ in pickletools.genops(data):
            name = None
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings = [*strings[-1:], str(arg)]
            elif op.name in ("GLOBAL", "INST"):
                name = str(arg).replace(" ", ".")
            elif op.name == "STACK_GLOBAL" and len(strings) == 2:
                name = ".".join(strings)
            if name is not None and found is None and name not in _safe_globals():
                found = name
    except Exception:  # not a complete pickle stream
        return None
    return found


def _safe_globals() -> set[str]:
    """The globals ``torch.load(weights_only=True)`` accepts (private API, so an empty set if it moves)."""
    try:
        from torch import _weights_only_unpickler as unpickler

        return set(unpickler._get_allowed_globals())
    except Exception:
        return set()


def _first_line(exc: BaseException) -> str:
    """The cause in a few words (torch's weights-only message buries it after a paragraph of advice)."""
    text = str(exc).rpartition("WeightsUnpickler error:")[2].strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def write_report(out: str | os.PathLike, data: dict[str, Any], markdown: str) -> dict[str, str]:
    """The one report writer: ``OUT/report.json`` (``data``) and ``OUT/report.md`` (``markdown``), atomically;
    returns their paths. Plots and HTML are written beside them by their owners."""
    out = Path(out)
    files = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    atomic_write_bytes(out / "report.md", markdown.encode())
    write_json(out / "report.json", data)
    return files
