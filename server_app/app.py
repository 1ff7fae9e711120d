"""ServerApp: resolves the run's settings and data, runs the chosen method, writes the results."""

from __future__ import annotations

import dataclasses
import time
from logging import INFO
from typing import Any

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from mas_flower.methods import build_method
from mas_flower.settings import Settings
from server_app.config import load_settings, synthetic_root
from server_app.report import write_outputs
from server_app.runner import FederatedRunner


def prepare_data(settings: Settings) -> Settings:
    """With no data-root, generate (once) and use the built-in synthetic federation."""
    if settings.data_root:
        return settings
    from mas_flower.synthetic import generate_dataset

    root = synthetic_root(settings)
    log(INFO, "no data-root given: using the synthetic federation at %s (generated on first use)", root)
    generate_dataset(root, buildings=settings.synthetic_buildings, views=settings.synthetic_views,
                     size=settings.synthetic_size, seed=settings.seed)
    return dataclasses.replace(settings, data_root=str(root))


def make_server_app(overrides: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose settings are the app defaults, the run config, then `overrides` (for tests)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = load_settings(dict(context.run_config), overrides)
        settings = prepare_data(settings)
        method = build_method(settings)
        started = time.time()
        runner = FederatedRunner(grid, settings, method)
        outcome, test_loss = runner.run()
        run_dir = write_outputs(settings, method, runner, outcome, test_loss, time.time() - started)
        log(INFO, "results written to %s", run_dir)

    return app


app = make_server_app()
