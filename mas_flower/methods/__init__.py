"""Federated methods by name (LibMTL-style): each module here holds one method and registers it.

Every module of this package is imported on first use, so adding a method is adding a file.
"""

from __future__ import annotations

from mas_flower.methods.base import METHODS, FederationSpec, Method, Stage, StageOutcome
from mas_flower.registry import import_submodules
from mas_flower.settings import Settings

import_submodules(__name__, __path__)


def list_methods() -> list[str]:
    return METHODS.names()


def build_method(settings: Settings) -> Method:
    return METHODS.get(settings.method)(settings)


__all__ = ["FederationSpec", "Method", "Stage", "StageOutcome", "build_method", "list_methods"]
