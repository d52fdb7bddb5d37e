"""The one shape of a run's report and the registry of report kinds.

Every report (evaluation, attack, transfer, training, or a kind of your own) is a :class:`Report`: its ``kind`` is
stored in ``report.json``, ``from_dict(to_dict())`` gives it back, it renders ``report.md`` and names the headline
figures ``robustlab compare`` sets side by side. A kind registers itself where it is defined, in one line::

    @register_report
    @dataclass
    class MyReport:
        kind: ClassVar[str] = "mine"
        ...

This package imports no report kind (robustlab's own register when ``robustlab.eval`` and ``robustlab.training``
load them; :mod:`robustlab.report_kinds` loads them all), so the kinds can import it without an import cycle.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, TypeVar, runtime_checkable

from robustlab.errors import RobustlabError

Figure = tuple[float, list[float] | None]  # a fraction in [0, 1] and its 95 % interval, if the report has one
DAMAGE = (KeyError, TypeError, ValueError, AttributeError, IndexError)  # what a damaged report.json raises


@runtime_checkable
class Report(Protocol):
    """What every report does: its kind (stored as report.json's ``"kind"``), a ``to_dict``/``from_dict`` round
    trip, ``report.md``, the headline figures ``compare`` uses, the sample count behind them and the page title."""

    kind: str

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report: ...

    def to_markdown(self) -> str: ...

    def headline(self) -> dict[str, Figure]: ...

    @property
    def n(self) -> int | None: ...

    def page_title(self) -> str: ...


REPORTS: dict[str, type] = {}  # kind -> the report class that reads it
R = TypeVar("R", bound=type)


def register_report(cls: R, *kinds: str) -> R:
    """Register ``cls`` as the reader of report.json files of its ``kind`` (or of each of ``kinds``); a decorator."""
    for kind in kinds or (cls.kind,):
        known = REPORTS.get(kind, cls)
        if (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):  # (a reload may repeat it)
            raise ValueError(f"report kind {kind!r} is already registered by {REPORTS[kind].__name__}")
        REPORTS[kind] = cls
    return cls


def legacy_kind(data: dict[str, Any]) -> str:
    """The kind of a ``report.json`` written before reports stored it, from the keys each kind wrote."""
    if "results" in data and "eps" in data:
        return "eval"
    if "attack_success_rate" in data:
        return "attack"
    if "matrix" in data and "targets" in data:
        return "transfer"
    if "history" in data and "epochs_done" in data:  # training reports stored their command as the kind
        return str(data.get("kind", "train"))
    raise RobustlabError("report.json is not a robustlab report (eval, attack, transfer or training)")


def report_kind(data: dict[str, Any]) -> str:
    """The kind of a ``report.json`` (``eval``, ``attack``, ``transfer``, a training command, or a registered one)."""
    kind = data.get("kind")
    if isinstance(kind, str) and kind in REPORTS:
        return kind
    try:
        return legacy_kind(data)
    except RobustlabError:
        if isinstance(kind, str):  # a kind of its own, whose class is not loaded
            raise _not_loaded(kind) from None
        raise


def _not_loaded(kind: str) -> RobustlabError:
    return RobustlabError(
        f"report.json holds a {kind!r} report, a kind not loaded here; import robustlab.report_kinds (every kind "
        "robustlab has) or the module that defines it"
    )


def report_from_dict(data: dict[str, Any]) -> Report:
    """The typed report of a ``report.json``, through the class registered for its kind; one error line if none
    is (a kind robustlab does not load here) or the file is damaged."""
    kind = report_kind(data)
    if kind not in REPORTS:
        raise _not_loaded(kind)
    try:
        return REPORTS[kind].from_dict(data)
    except RobustlabError as exc:
        raise RobustlabError(f"report.json of this {kind} run is incomplete or damaged: {exc}") from None
    except DAMAGE as exc:
        raise RobustlabError(f"report.json of this {kind} run is incomplete or damaged ({exc!r})") from None


def from_fields(cls: type, d: dict[str, Any], **typed: Any) -> Any:
    """A dataclass ``cls`` built from the keys of ``d`` named like its fields (others are ignored, missing ones
    take their defaults), with ``typed`` (fields ``d`` holds in another form, read by the caller) on top."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{**{k: v for k, v in d.items() if k in names}, **typed})


__all__ = [
    "DAMAGE",
    "Figure",
    "REPORTS",
    "Report",
    "from_fields",
    "legacy_kind",
    "register_report",
    "report_from_dict",
    "report_kind",
]
