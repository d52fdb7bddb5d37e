"""One registry type for what robustlab builds by name (attacks, losses, training methods, SSL methods, model sources):
aliases, one-line refusals listing the choices and the closest one, options checked against the signature."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from robustlab.errors import RobustlabError

T = TypeVar("T")


def canonical(name: str) -> str:
    """The lookup key of a name: ``" Noise_Aug "`` -> ``"noise-aug"``."""
    return str(name).strip().lower().replace("_", "-")


def signature_options(factory: Callable[..., Any]) -> tuple[list[str], bool]:
    """The keyword options ``factory`` names, and whether it takes any other name: ``**kwargs`` is followed to the
    base classes' ``__init__``, from an alternate constructor ``cls.make(**kwargs)`` to ``cls.__init__``, and from a
    class that hands them to another (its ``options_from`` attribute) to that one."""
    if inspect.isclass(factory):
        chain = [k.__init__ for k in factory.__mro__[:-1] if "__init__" in vars(k)]  # up to, not into, object
    else:  # an alternate constructor cls.make(**kwargs) passes its options on to cls.__init__
        owner = factory.__self__ if inspect.ismethod(factory) and inspect.isclass(factory.__self__) else None
        chain = [factory, *([owner.__init__] if owner else [])]
    names: list[str] = []
    for function in chain:
        params = list(inspect.signature(function).parameters.values())
        named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        names += [n for n in named if n not in ("self", "cls", *names)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names, False
    if getattr(factory, "options_from", None) is not None:
        more, open_ = signature_options(factory.options_from)  # type: ignore[union-attr]
        return names + [n for n in more if n not in names], open_
    return names, bool(chain)


class Registry(Generic[T]):
    """Things of one ``kind`` by name: ``METHODS.register("pgd", PGDAT, aliases=("pgd-at",))``, ``.get("PGD_AT")``;
    iterating yields the registered names in registration order (the choices for ``--help``)."""

    def __init__(
        self, kind: str, key: Callable[[str], str] = canonical, refusal: str = "{kind} {name} does not take {option}"
    ) -> None:
        self.kind, self._key, self._refusal = kind, key, refusal
        self._entries: dict[str, tuple[str, T]] = {}  # key -> (name, thing)
        self._aliases: dict[str, str] = {}  # alias key -> key

    def register(self, name: str, thing: T, aliases: Iterable[str] = (), replace: bool = False) -> T:
        """Register ``thing`` under ``name`` and ``aliases``; a name taken already is refused unless ``replace``."""
        keys = [self._key(n) for n in (name, *aliases)]
        if (taken := [k for k in keys if k in self]) and not replace:
            raise ValueError(f"{self.kind} name(s) {taken} are registered already; pass replace=True to replace them")
        self._aliases = {a: k for a, k in self._aliases.items() if a not in keys}  # replaced aliases go
        self._entries[keys[0]] = (name, thing)
        self._aliases.update(dict.fromkeys(keys[1:], keys[0]))
        return thing

    def unregister(self, name: str) -> None:
        """Remove ``name`` and its aliases (for tests and plug-ins)."""
        self._entries.pop(key := self._key(name), None)
        self._aliases = {alias: k for alias, k in self._aliases.items() if k != key}

    def __contains__(self, name: object) -> bool:
        return self._key(str(name)) in {**self._entries, **self._aliases}

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        """The registered names (not the aliases), in registration order."""
        return [name for name, _ in self._entries.values()]

    def get(self, name: str) -> T:
        """The thing registered as ``name`` or an alias; an unknown name is refused in one line with the choices."""
        key = self._key(name)
        if (key := self._aliases.get(key, key)) not in self._entries:
            close = difflib.get_close_matches(key, [*self._entries, *self._aliases], 1)
            hint = f" (did you mean {self._entries[self._aliases.get(close[0], close[0])][0]}?)" if close else ""
            raise RobustlabError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}{hint}")
        return self._entries[key][1]

    def check_options(self, name: str, options: Iterable[str], factory: Callable[..., Any] | None = None) -> None:
        """Refuse (one line naming it and the accepted ones) an option the constructor's signature does not take."""
        accepted, open_ = signature_options(factory or self.get(name))  # type: ignore[arg-type]
        unknown = [o for o in options if o not in accepted]
        if unknown and not open_:
            takes = f"it takes: {', '.join(accepted)}" if accepted else "it takes no options"
            raise RobustlabError(f"{self._refusal.format(kind=self.kind, name=name, option=unknown[0])}; {takes}")


__all__ = ["Registry", "canonical", "signature_options"]
