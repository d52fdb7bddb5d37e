"""The content digest of a model's weights: what was actually loaded, not the name it was loaded by."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch


def tensor_bytes(value: torch.Tensor) -> bytes:
    """A tensor's raw bytes on the CPU (any dtype, bfloat16 included), for hashing."""
    flat = value.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def state_dict_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 of a state dict: each entry's name, dtype, shape and bytes, in the dict's (deterministic) order, so
    the same weights give the same digest whatever file or spec they came from."""
    digest = hashlib.sha256()
    for key, value in state.items():
        digest.update(key.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(tensor_bytes(value))
        else:  # e.g. a module's _extra_state
            digest.update(repr(value).encode())
    return digest.hexdigest()


__all__ = ["state_dict_digest", "tensor_bytes"]
