"""The one figure helper: figures built on ``matplotlib.figure.Figure`` (no pyplot state, no backend switch, so
importing robustlab never changes a user's matplotlib setup) and saved as PNG atomically."""

from __future__ import annotations

import io
import os
from typing import Any

from robustlab.io import atomic_write_bytes


def subplots(rows: int = 1, cols: int = 1, **figure_kwargs: Any) -> tuple[Any, Any]:
    """A new ``Figure`` and its axes (as ``Figure.subplots`` returns them); kwargs go to ``Figure``
    (``figsize``, ``layout``) except ``squeeze``."""
    from matplotlib.figure import Figure

    squeeze = figure_kwargs.pop("squeeze", True)
    fig = Figure(**figure_kwargs)
    return fig, fig.subplots(rows, cols, squeeze=squeeze)


def save_png(fig: Any, path: str | os.PathLike, dpi: int = 110, **savefig_kwargs: Any) -> None:
    """Render ``fig`` to PNG and write it atomically (a kill leaves the old file or the new one)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, **savefig_kwargs)
    atomic_write_bytes(path, buffer.getvalue())


__all__ = ["save_png", "subplots"]
