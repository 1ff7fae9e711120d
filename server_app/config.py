"""The run's settings: the app's pyproject defaults, then `--run-config`, then test overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib

from mas_flower.settings import Settings, home

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def app_defaults() -> dict[str, Any]:
    """`[tool.flwr.app.config]` of the app's pyproject: the single place defaults are written."""
    with PYPROJECT.open("rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def load_settings(run_config: dict[str, Any], overrides: dict[str, Any] | None = None) -> Settings:
    return Settings.from_run_config({**app_defaults(), **run_config, **(overrides or {})})


def synthetic_root(settings: Settings) -> Path:
    """Where the default synthetic federation lives: outside the app folder, one per generator setting."""
    s = settings
    name = f"synthetic-b{s.synthetic_buildings}-v{s.synthetic_views}-s{s.synthetic_size}-seed{s.seed}"
    return home() / "data" / name
