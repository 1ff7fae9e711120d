"""The app's run-config defaults, in code: the one place they are written.

`pyproject.toml`'s `[tool.flwr.app.config]` must list the same keys and values (Flower reads it there
for `flwr run`; `tests/test_defaults.py` keeps the two equal). Code never reads `pyproject.toml`, so
the package works the same from a wheel as from a checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mas_flower.settings import Settings, home

#: Run-config key -> default value (TOML scalar types: str, int, float, bool).
RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "method": "mas",
    "task-set": "sdnkt",
    "splits": 2,
    "num-rounds": 20,
    "merge-rounds": 14,
    "affinity-rounds": 5,
    "affinity-every": 2,
    "local-epochs": 2,
    "clients-per-round": 4,
    "batch-size": 16,
    "lr": 0.2,
    "image-size": 32,
    "model": "tiny",
    "data-root": "",
    "output-dir": "",
    "seed": 0,
    "run-name": "",
    "affinity-mode": "exact",
    "affinity-first-epoch-only": False,
    "fedprox-mu": 0.004,
    "gradnorm-alpha": 1.5,
    "eval-batch-size": 64,
    "synthetic-buildings": 6,
    "synthetic-views": 96,
    "synthetic-size": 32,
    "resume": "",
    "min-replies": 1,
    "round-retries": 2,
    "reply-timeout": 3600.0,
    "node-timeout": 300.0,
    "energy-country": "GB",
    "energy-intensity": 0.0,
    "precision": "auto",
    "server-strategy": "fedavg",
    "server-lr": 0.0,
    "server-momentum": 0.0,
    "beta-1": 0.9,
    "beta-2": 0.99,
    "tau": 0.001,
    "trim-beta": 0.2,
    "eval-every": 1,
    "lost-after": 3,
    "test-coverage": "all",
    "split-schedule": "continue",
    "hoa-single-cost": 1.0,
}


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
