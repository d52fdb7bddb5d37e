"""The one way to run a model in another train/eval mode for a while and give it back exactly as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def temporary_mode(model: nn.Module, training: bool = False) -> Iterator[nn.Module]:
    """Switch every submodule of ``model`` to ``training`` (default: eval) for the block, then restore each
    submodule's own flag (a model with mixed modes comes back mixed)."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, was in modes:
            m.training = was


__all__ = ["temporary_mode"]
