"""The app's run-config defaults and meanings, as tables derived from `Settings`' declarations.

The keys are declared once, in `mas_flower.settings.Settings`; this module only tabulates them.
`pyproject.toml`'s `[tool.flwr.app.config]` must list the same keys and values (Flower reads it there
for `flwr run`; `tests/test_package.py` keeps the two equal). Code never reads `pyproject.toml`, so
the package works the same from a wheel as from a checkout.
"""

from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Any

from mas_flower.settings import DECLARED, Settings, home

#: Run-config key -> default value (TOML scalar types: str, int, float, bool), grouped as declared.
RUN_CONFIG_DEFAULTS: dict[str, Any] = {d.key: d.default for d in DECLARED}

#: Run-config key -> what it means, one line each (`mas-flower config` prints them with the defaults).
RUN_CONFIG_HELP: dict[str, str] = {d.key: d.meaning for d in DECLARED}


def describe_run_config(markdown: bool = False) -> str:
    """Every run-config key, its default (as written in `--run-config`, TOML) and its meaning: aligned
    columns, or when `markdown` one table (`| key | default | meaning |`) per group under a `###` heading."""
    if markdown:
        tables = [[f"### {group.title}", "", "| key | default | meaning |", "|---|---|---|",
                   *(f"| `{d.key}` | `{_toml_value(d.default)}` | {d.meaning} |" for d in keys)]
                  for group, keys in groupby(DECLARED, key=lambda d: d.group)]
        return "\n\n".join("\n".join(table) for table in tables)
    rows = [(d.key, _toml_value(d.default), d.meaning) for d in DECLARED]
    width_k, width_d = (max(len(r[i]) for r in rows) for i in (0, 1))
    return "\n".join(f"{k:<{width_k}}  {d:<{width_d}}  {m}" for k, d, m in rows)


def _toml_value(value: Any) -> str:
    """A default as `--run-config` writes it: 'text', 3, 0.2, false."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"'{value}'" if isinstance(value, str) else repr(value)


def app_defaults() -> dict[str, Any]:
    """A fresh copy of the defaults (callers may change it)."""
    return dict(RUN_CONFIG_DEFAULTS)


def load_settings(run_config: dict[str, Any], overrides: dict[str, Any] | None = None) -> Settings:
    """The defaults, then `run_config` (e.g. `flwr run --run-config`), then `overrides` (tests), validated.

    Raises ValueError naming the key for an unknown key, a value of the wrong type or an impossible setting.
    """
    return Settings.from_run_config({**RUN_CONFIG_DEFAULTS, **run_config, **(overrides or {})})


def synthetic_root(settings: Settings) -> Path:
    """Where the default synthetic federation lives: outside the app folder, one per generator setting."""
    s = settings
    name = f"synthetic-b{s.synthetic_buildings}-v{s.synthetic_views}-s{s.synthetic_size}-seed{s.seed}"
    return home() / "data" / name
