"""Progress bars (stderr, only when asked for): the evaluator's bar counts samples and names the attack at work; one
bar for a whole evaluation (:class:`EvalProgress`) names the eps and moves with the attack's model passes, not only
when a batch finishes; the sanity checks' bar (:class:`CheckProgress`) names the check at work."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}{postfix}]"


def plural(count: int, word: str, many: str | None = None) -> str:
    """``plural(1, "restart")`` -> ``"1 restart"``, ``plural(3, "restart")`` -> ``"3 restarts"``."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def expected_passes(attack: Any) -> int | None:
    """About how many forward passes ``attack`` makes on a batch (steps x restarts, + a final pass each), where its
    settings say (APGD-T: per target); ``None`` where they do not (an adapter, a query-based attack)."""
    runs, targets = getattr(attack, "runs", None), getattr(attack, "targets", None)
    if isinstance(runs, list) and runs and isinstance(targets, int):  # one run per target
        one = expected_passes(runs[0])
        return None if one is None else targets * one
    steps = getattr(attack, "steps", None)
    restarts = getattr(attack, "restarts", None) or getattr(attack, "n_restarts", None) or 1
    if not isinstance(steps, int) or not isinstance(restarts, int) or steps < 1:
        return None
    return (steps + 1) * restarts


@contextlib.contextmanager
def _counting(model: nn.Module, on_pass: Callable[[], None]) -> Iterator[None]:
    """Calls ``on_pass`` after every forward pass of ``model`` (TorchScript takes no hooks: nothing is counted)."""
    try:
        handle = model.register_forward_hook(lambda *_: on_pass())
    except (RuntimeError, AttributeError):
        handle = None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def _fraction(passes: int, expected: int | None, scale: int = 50) -> float:
    """How far along a piece of work with ``expected`` passes is after ``passes`` (below 1 until it says it ended;
    with no expectation, a curve that keeps moving: half-way at ``scale`` passes)."""
    if expected:
        return min(passes / expected, 0.99)
    return passes / (passes + scale)


class SampleProgress:
    """A tqdm bar over ``total`` samples; :meth:`attack` shows the attack at work and its forward passes."""

    def __init__(self, total: int, desc: str = "evaluating") -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="sample", leave=False, dynamic_ncols=True)
        self.passes, self._shown = 0, 0.0

    @contextlib.contextmanager
    def attack(self, model: nn.Module, name: str, attack: Any, n: int) -> Iterator[None]:
        """While ``attack`` runs on ``n`` samples: its name, restarts and forward passes in the bar's postfix."""
        label = _attack_label(name, attack, n)
        self.passes = 0
        self.bar.set_postfix_str(label, refresh=True)

        def count() -> None:
            self.passes += 1
            if time.monotonic() - self._shown > 0.5:  # redraw at most twice a second
                self._shown = time.monotonic()
                self.bar.set_postfix_str(f"{label}: {plural(self.passes, 'forward pass', 'forward passes')}")

        with _counting(model, count):
            yield
        # drawn now: an attack shorter than the redraw interval would otherwise show only its first pass
        self.bar.set_postfix_str(f"{label}: {plural(self.passes, 'forward pass', 'forward passes')}")

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


class EvalProgress:
    """One bar for a whole evaluation, every eps and attack: ``eps 0.1 (2/3)`` and the attack at work, moving with
    that attack's forward passes (a share of the batch per attack) and set exactly as each batch finishes.

    Give it as the evaluator's ``progress`` once per eps (:meth:`at_eps`); :meth:`finish` closes it."""

    redraw_every = 0.5  # seconds between redraws while an attack runs

    def __init__(self, n_eps: int, attacks: int, batch_size: int, desc: str = "eval") -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=0, desc=desc, unit="samples", leave=False, dynamic_ncols=True, bar_format=BAR_FORMAT)
        self.n_eps, self.attacks, self.batch_size, self.desc = n_eps, max(1, attacks), batch_size, desc
        self.index, self.done, self.stage_left, self.in_batch, self.passes, self._shown = 0, 0, 0, 0, 0, 0.0

    def at_eps(self, eps: float, index: int) -> EvalProgress:
        """This bar, now at the ``index``-th eps (from 0)."""
        self.index = index
        self.bar.set_description_str(f"{self.desc} eps {eps:.4g} ({index + 1}/{self.n_eps})", refresh=True)
        return self

    def start(self, total: int) -> None:
        """An eps begins with ``total`` samples to evaluate (resumed batches excluded): the bar's total follows."""
        self.stage_left, self.in_batch = total, 0
        self.bar.total = self.done + total * (self.n_eps - self.index)
        self.bar.refresh()

    @contextlib.contextmanager
    def attack(self, model: nn.Module, name: str, attack: Any, n: int) -> Iterator[None]:
        """While ``attack`` runs on ``n`` samples of a batch: named in the bar, which moves with its passes."""
        label, expected = _attack_label(name, attack, n), expected_passes(attack)
        share = min(self.batch_size, self.stage_left) / self.attacks  # this attack's part of the batch
        self.passes = 0
        self.bar.set_postfix_str(label, refresh=True)

        def count() -> None:
            self.passes += 1
            if time.monotonic() - self._shown >= self.redraw_every:
                self._shown = time.monotonic()
                self._move(share * (self.in_batch + _fraction(self.passes, expected)))
                self.bar.set_postfix_str(f"{label}: {plural(self.passes, 'pass', 'passes')}")

        with _counting(model, count):
            yield
        self.in_batch += 1
        self._move(share * self.in_batch)
        self.bar.set_postfix_str(f"{label}: {plural(self.passes, 'pass', 'passes')}", refresh=False)

    def _move(self, within: float) -> None:
        self.bar.n = self.done + within  # within the batch: below its size until update() says it finished
        self.bar.refresh()

    def update(self, n: int) -> None:
        """A batch of ``n`` samples finished (every attack): the bar moves to exactly the samples done."""
        self.done += n
        self.stage_left -= n
        self.in_batch = 0
        self.bar.n = self.done
        self.bar.refresh()

    def close(self) -> None:
        """The end of an eps (the bar stays for the next one)."""

    def finish(self) -> None:
        """The end of the evaluation: the bar goes."""
        self.bar.close()


class CheckProgress:
    """A bar over the sanity checks: names the check at work, moves with its forward passes."""

    redraw_every = 0.5

    def __init__(self, total: int, desc: str = "sanity checks") -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="checks", leave=False, dynamic_ncols=True, bar_format=BAR_FORMAT)
        self.done, self._shown = 0, 0.0

    @contextlib.contextmanager
    def check(self, name: str, model: nn.Module) -> Iterator[None]:
        """While the check ``name`` runs on ``model``."""
        passes = 0
        self.bar.set_postfix_str(name, refresh=True)

        def count() -> None:
            nonlocal passes
            passes += 1
            if time.monotonic() - self._shown >= self.redraw_every:
                self._shown = time.monotonic()
                self.bar.n = self.done + _fraction(passes, None)
                self.bar.set_postfix_str(f"{name}: {plural(passes, 'pass', 'passes')}")

        with _counting(model, count):
            yield
        self.done += 1
        self.bar.n = self.done
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class NoProgress:
    """The same calls, showing nothing."""

    @contextlib.contextmanager
    def attack(self, model: nn.Module, name: str, attack: Any, n: int) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def check(self, name: str, model: nn.Module) -> Iterator[None]:
        yield

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _attack_label(name: str, attack: Any, n: int) -> str:
    restarts = getattr(attack, "restarts", None) or getattr(attack, "n_restarts", None)
    restarts_text = f", {plural(restarts, 'restart')}" if isinstance(restarts, int) and restarts > 1 else ""
    return f"{name} on {plural(n, 'sample')}{restarts_text}"


def sample_progress(progress: bool | str | EvalProgress, total: int) -> SampleProgress | EvalProgress | NoProgress:
    """The evaluator's bar over ``total`` samples: a shared :class:`EvalProgress` (this eps's part), a bar of its own
    when ``progress`` is set (a string names it), else one that shows nothing."""
    if isinstance(progress, EvalProgress):
        progress.start(total)
        return progress
    if not progress:
        return NoProgress()
    return SampleProgress(total, progress if isinstance(progress, str) else "evaluating")


def check_progress(progress: bool | CheckProgress | NoProgress | None, total: int) -> CheckProgress | NoProgress:
    """The sanity checks' bar over ``total`` checks when ``progress`` is set, else one that shows nothing."""
    if isinstance(progress, (CheckProgress, NoProgress)):
        return progress
    return CheckProgress(total) if progress else NoProgress()


__all__ = [
    "CheckProgress",
    "EvalProgress",
    "NoProgress",
    "SampleProgress",
    "check_progress",
    "expected_passes",
    "plural",
    "sample_progress",
]
