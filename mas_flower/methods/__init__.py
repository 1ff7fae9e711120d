"""Federated methods by name (LibMTL-style): each module here holds one method and registers it.

Every module of this package is imported on first use, so adding a method is adding a file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mas_flower.methods.base import METHODS, FederationSpec, Method, Stage, StageOutcome
from mas_flower.registry import import_submodules

if TYPE_CHECKING:
    from mas_flower.settings import Settings

import_submodules(__name__, __path__)


def list_methods() -> list[str]:
    return METHODS.names()


def method_class(name: str) -> type[Method]:
    """The registered method class; ValueError naming the known ones if there is none."""
    return METHODS.get(name)


def split_methods() -> list[str]:
    """Names of the methods that take a number of groups x."""
    return [n for n in METHODS.names() if METHODS.get(n).takes_splits]


def build_method(settings: Settings) -> Method:
    return METHODS.get(settings.method)(settings)


__all__ = ["FederationSpec", "Method", "Stage", "StageOutcome", "build_method", "list_methods", "method_class",
           "split_methods"]
