"""Federated methods by name (LibMTL-style): each module here holds one method and registers it.

Every module of this package is imported on first use, so adding a method is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil

from mas_flower.methods.base import FederationSpec, Method, Stage, StageOutcome, registry
from mas_flower.settings import Settings

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def list_methods() -> list[str]:
    return sorted(registry())


def build_method(settings: Settings) -> Method:
    try:
        cls = registry()[settings.method]
    except KeyError:
        raise ValueError(f"unknown method {settings.method!r}; known: {', '.join(list_methods())}") from None
    return cls(settings)


__all__ = ["FederationSpec", "Method", "Stage", "StageOutcome", "build_method", "list_methods"]
