"""ServerApp: checks the run's settings and data, runs the chosen method, writes the results.

A thin shell over the library's `MethodStrategy` (`mas_flower.strategy`). Everything that can be
wrong with the input is checked before any training, and a failure raises (so the run ends
`finished:failed`) without writing anything that looks like a finished result.
"""

from __future__ import annotations

import dataclasses
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from mas_flower.defaults import load_settings, synthetic_root
from mas_flower.methods import Method, build_method
from mas_flower.models import build_model
from mas_flower.results import new_run_dir, write_json
from mas_flower.settings import Settings
from mas_flower.strategy import MethodStrategy, load_checkpoint, write_outputs


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


def resolve(run_config: dict[str, Any], overrides: dict[str, Any] | None) -> tuple[Settings, dict | None]:
    """The run's settings; when resuming, the original run's settings and its checkpoint."""
    settings = load_settings(run_config, overrides)
    if not settings.resume:
        return settings, None
    checkpoint = load_checkpoint(Path(settings.resume))
    original = Settings.from_run_config({**checkpoint["config"], "resume": settings.resume})
    log(INFO, "resuming %s with its original settings", settings.resume)
    return original, checkpoint


def preflight(run_config: dict[str, Any], overrides: dict[str, Any] | None = None
              ) -> tuple[Settings, Method, dict | None]:
    """Everything checked before any node is contacted: settings, model and image size, data, method."""
    settings, checkpoint = resolve(run_config, overrides)
    build_model(settings.model, settings.task_set, image_size=settings.image_size)  # fails early on a bad size
    settings = prepare_data(settings)
    return settings, build_method(settings), checkpoint


def make_server_app(overrides: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose settings are the app defaults, the run config, then `overrides` (for tests)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        settings, method, checkpoint = preflight(dict(context.run_config), overrides)
        strategy = MethodStrategy(method, checkpoint=checkpoint)
        strategy.roster.discover(grid)  # every node can load its data, and there are enough of them
        if checkpoint is None:
            run_dir = new_run_dir(settings)
            write_json(run_dir / "config.json", settings.to_run_config())
        else:
            run_dir = Path(settings.resume)
        log(INFO, "run folder: %s", run_dir)
        strategy.run_dir = run_dir
        strategy.start(grid)
        write_outputs(strategy, run_dir)

    return app


app = make_server_app()
