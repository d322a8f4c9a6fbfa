"""Named registries: one per extension point (sources, row transforms, metrics, ...).

An extension point in flanx is a `Registry`: adding a thing is one registered
function, and whatever validates a name (a task card, a gin binding, a CLI
flag) checks it against the registry's keys instead of re-listing them.

    SOURCES = Registry("source type")

    @SOURCES.register("jsonl")
    def read_jsonl(card, split_spec): ...

    SOURCES["jsonl"]            # the function; an unknown name raises UnknownName listing close matches
    SOURCES.check(name, where)  # same, as a ValueError naming `where` (a card file and key)

Registering a name twice is an error unless `override=True`, so a user's
plug-in cannot silently replace a built-in. A registry may take a `validator`
that checks each object as it is registered (e.g. a metric's signature), so a
mistake in a plug-in surfaces at import, not in the middle of a run. Stdlib
only: importable from the TensorFlow-free core.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """A name that is not in a registry; the message lists close matches and every known name."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


def suggest(name: str, known) -> str:
    """'; did you mean: a, b?' for close matches of `name` among `known`, else ''."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=3, cutoff=0.6)
    return f"; did you mean: {', '.join(close)}?" if close else ""


def with_hint(message: str, hint: str) -> str:
    """`message`, then `hint` as its own sentence (after '?' or '.', no doubled punctuation)."""
    if not hint:
        return message
    return f"{message} {hint}" if message.endswith(("?", ".")) else f"{message}. {hint}"


class Registry(Generic[T]):
    """A name -> object table with decorator registration and helpful lookups."""

    def __init__(self, kind: str, hint: str = "", validator: Callable[[str, T], None] | None = None):
        self.kind = kind  # what a name names, for messages ("source type", "metric")
        self.hint = hint  # how to add one, appended to unknown-name errors
        self.validator = validator  # raises TypeError/ValueError for an object that cannot serve
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, override: bool = False):
        """`@registry.register("name")` or `registry.register("name", obj)`; returns obj."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")

        def add(value: T) -> T:
            if name in self._items and not override and self._items[name] is not value:
                raise ValueError(f"{self.kind} {name!r} is already registered; pass override=True "
                                 f"to replace it on purpose")
            if self.validator is not None:
                self.validator(name, value)
            self._items[name] = value
            return value

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownName(self._unknown(name)) from None

    def get(self, name: str, default: T | None = None) -> T | None:
        return self._items.get(name, default)

    def check(self, name: str, where: str) -> T:
        """The registered object, or a ValueError naming `where` (e.g. 'task card x.yaml: metrics')."""
        try:
            return self[name]
        except UnknownName as e:
            raise ValueError(f"{where}: {e}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def items(self):
        return self._items.items()

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"

    def _unknown(self, name) -> str:
        known = ", ".join(self._items) or "none registered"
        msg = f"unknown {self.kind} {name!r}{suggest(name, self._items)} (known: {known})"
        return with_hint(msg, self.hint)

