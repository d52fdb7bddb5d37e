"""The evaluator's progress bar: it counts samples (not batches, which sit at 0/1 for minutes on a small ``--n``),
names the attack running, on how many samples, with how many restarts, and counts its forward passes as it goes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from torch import nn


class SampleProgress:
    """A tqdm bar over ``total`` samples; :meth:`attack` shows the attack at work and its forward passes."""

    def __init__(self, total: int, desc: str = "evaluating") -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="sample", leave=False, dynamic_ncols=True)
        self.passes, self._shown = 0, 0.0

    @contextlib.contextmanager
    def attack(self, model: nn.Module, name: str, attack: Any, n: int) -> Iterator[None]:
        """While ``attack`` runs on ``n`` samples: its name, restarts and forward passes in the bar's postfix."""
        restarts = getattr(attack, "restarts", None) or getattr(attack, "n_restarts", None)
        label = f"{name} on {n} samples" + (f", {restarts} restarts" if isinstance(restarts, int) else "")
        self.passes = 0
        self.bar.set_postfix_str(label, refresh=True)

        def count(*_: Any) -> None:
            self.passes += 1
            if time.monotonic() - self._shown > 0.5:  # redraw at most twice a second
                self._shown = time.monotonic()
                self.bar.set_postfix_str(f"{label}: {self.passes} forward passes", refresh=True)

        try:
            handle = model.register_forward_hook(count)
        except (RuntimeError, AttributeError):  # TorchScript modules take no hooks: the label alone
            handle = None
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()
                self.bar.set_postfix_str(f"{label}: {self.passes} forward passes", refresh=False)

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


class NoProgress:
    """The same calls, showing nothing."""

    @contextlib.contextmanager
    def attack(self, model: nn.Module, name: str, attack: Any, n: int) -> Iterator[None]:
        yield

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def sample_progress(progress: bool | str, total: int) -> SampleProgress | NoProgress:
    """A bar over ``total`` samples when ``progress`` is set (a string names the bar), else one that shows nothing."""
    if not progress:
        return NoProgress()
    return SampleProgress(total, progress if isinstance(progress, str) else "evaluating")


__all__ = ["NoProgress", "SampleProgress", "sample_progress"]
