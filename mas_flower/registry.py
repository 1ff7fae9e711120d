"""One name -> entry registry for everything chosen by name (models, methods, loss weightings), so
that the unknown-name error, the double-registration check and the listing are written once, and
adding one of them is adding a file."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one `kind` by name: classes (methods, weightings) or anything a kind keeps per name
    (a model's builder with its stride)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Keep `entry` under `name`; a second entry under the same name is refused (two files
        claiming one name would otherwise silently shadow each other)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: `add` the class under `name` and set its `name` to it, so that the class
        knows the name it is chosen by."""

        def decorate(entry: T) -> T:
            self.add(name, entry)
            entry.name = name  # type: ignore[attr-defined]
            return entry

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None


def import_submodules(package: str, path: Iterable[str], skip: tuple[str, ...] = ("base",)) -> None:
    """Import every module of a package (so that their decorators register them)."""
    for module in pkgutil.iter_modules(path):
        if module.name not in skip:
            importlib.import_module(f"{package}.{module.name}")
