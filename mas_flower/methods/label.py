"""How suites, run folders and tables name a method: `fedavg`, `mas-3`, `mas-3@fedadam`.

The one parser of such labels: `MethodLabel.parse` for what a user writes (a suite's `methods`), which
refuses anything it cannot run, and `MethodLabel.read` for labels of finished runs, which may name a
method this checkout does not have and must still be shown.
"""

from __future__ import annotations

from dataclasses import dataclass

from mas_flower.methods.base import METHODS


@dataclass(frozen=True)
class MethodLabel:
    """A method (`Method.name`), its number of groups x for split methods, and the Flower server strategy
    when it is not the default one (`server-strategy`, e.g. `fedadam`)."""

    method: str
    splits: int | None = None
    server_strategy: str | None = None

    @property
    def label(self) -> str:
        """`mas-3`, `fedavg`, `mas-3@fedadam`: the inverse of `parse`."""
        base = self.method if self.splits is None else f"{self.method}-{self.splits}"
        return base if self.server_strategy is None else f"{base}@{self.server_strategy}"

    @classmethod
    def parse(cls, text: str) -> MethodLabel:
        """A label a user wrote. Raises ValueError (naming the known methods or strategies) for an
        unknown method or server strategy, a split method without x, x on a method that takes none,
        or x < 1."""
        from mas_flower.strategy.aggregators import check_server_strategy

        body, at, server = text.partition("@")
        if at:
            check_server_strategy(server, f" (after '@' in {text!r})")
        known = METHODS.names()
        if body in known:
            if METHODS.get(body).takes_splits:
                raise ValueError(f"{body!r} needs a number of groups x: write e.g. '{body}-2'")
            return cls(body, None, server or None)
        base, _, x = body.rpartition("-")
        if base in known and x.isdigit():
            if not METHODS.get(base).takes_splits:
                from mas_flower.methods import split_methods  # the package imports this module first

                raise ValueError(f"{base!r} takes no number of groups (only {', '.join(split_methods())} do): "
                                 f"write '{base}'")
            if int(x) < 1:
                raise ValueError(f"{body!r}: the number of groups must be at least 1")
            return cls(base, int(x), server or None)
        raise ValueError(f"unknown method {body!r}; known: {', '.join(known)} (split methods as e.g. 'mas-2')")

    @classmethod
    def read(cls, text: str) -> MethodLabel:
        """A label from a finished run or table, never refused: an unknown method comes back whole
        (`MethodLabel('mystery-2')`), a known split method with its x."""
        body, _, server = text.partition("@")
        base, _, x = body.rpartition("-")
        if base in METHODS.names() and METHODS.get(base).takes_splits and x.isdigit():
            return cls(base, int(x), server or None)
        return cls(body, None, server or None)
