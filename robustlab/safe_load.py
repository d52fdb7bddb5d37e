"""The one ``torch.load`` of robustlab: weights only unless the user trusts the file, and every refusal one line.

A file that changed on disk since its run wrote it is refused first (:func:`robustlab.io.check_digest`); a pickle that
would import something outside PyTorch's safe list is named (:func:`python_objects_in`), so the user learns what
``--trust-checkpoint`` would let run.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from robustlab.errors import CheckpointError
from robustlab.io import check_digest


def safe_load(path: str | os.PathLike, trust: bool = False, what: str = "checkpoint") -> Any:
    """The one ``torch.load`` of robustlab: ``weights_only=True`` (tensors, numbers, strings, lists, dicts) unless
    the user trusts the file; a missing, empty, corrupt or hostile file raises one :class:`CheckpointError` line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist; check the path")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {str(path)!r} is empty (0 bytes); it was not saved completely: save it again")
    check_digest(path, what)
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
