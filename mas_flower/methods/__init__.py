"""Federated methods by name (LibMTL-style: one file per method, registered on import)."""

from __future__ import annotations

from mas_flower.methods import fedavg, mas  # noqa: F401  (registration)
from mas_flower.methods.base import FederationSpec, Method, Stage, StageOutcome, registry
from mas_flower.settings import Settings


def list_methods() -> list[str]:
    return sorted(registry())


def build_method(settings: Settings) -> Method:
    try:
        cls = registry()[settings.method]
    except KeyError:
        raise ValueError(f"unknown method {settings.method!r}; known: {', '.join(list_methods())}") from None
    return cls(settings)


__all__ = ["FederationSpec", "Method", "Stage", "StageOutcome", "build_method", "list_methods"]
