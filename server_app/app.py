"""ServerApp: checks the run's settings and data, runs the chosen method, writes the results.

A thin shell over the library's `MethodStrategy` (`mas_flower.strategy`). Everything that can be
wrong with the input is checked before any training, and a failure raises (so the run ends
`finished:failed`) without writing anything that looks like a finished result.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from mas_flower.defaults import load_settings
from mas_flower.methods import Method, build_method
from mas_flower.models import build_model
from mas_flower.prepare import prepare_data
from mas_flower.results import new_run_dir, write_json
from mas_flower.settings import Settings
from mas_flower.strategy import MethodStrategy, load_checkpoint, write_outputs
from mas_flower.strategy.checkpoint import RESUME_MAY_CHANGE, resume_settings


def resolve(run_config: dict[str, Any], overrides: dict[str, Any] | None,
            given: Iterable[str] = ()) -> tuple[Settings, dict | None]:
    """The run's settings; when resuming, the original run's settings and its checkpoint.

    A resume keeps its word: a key given with `resume` (named in `given`, in `overrides`, or
    differing from the app default: `checkpoint.given_keys`) whose value differs from the
    checkpoint's is refused with CheckpointError, unless it is one of `RESUME_MAY_CHANGE`, which is
    applied and logged.
    """
    try:
        settings = load_settings(run_config, overrides)
    except ValueError as err:
        resume = {**run_config, **(overrides or {})}.get("resume")
        if not resume:
            raise
        raise ValueError(f"{err} (with resume={resume!r}: a resumed run continues with its checkpoint's settings; "
                         f"give only resume, and if need be {', '.join(RESUME_MAY_CHANGE)})") from err
    if not settings.resume:
        return settings, None
    checkpoint = load_checkpoint(Path(settings.resume))
    resumed, applied = resume_settings(settings, checkpoint, {*given, *(overrides or {})})
    log(INFO, "resuming %s (written by mas-flower %s) with its original settings%s", settings.resume,
        checkpoint.get("app_version"),
        "; applied the given " + ", ".join(f"{k}={v!r} (checkpoint: {old!r})" for k, (v, old) in applied.items())
        if applied else "")
    return resumed, checkpoint


def preflight(run_config: dict[str, Any], overrides: dict[str, Any] | None = None, given: Iterable[str] = ()
              ) -> tuple[Settings, Method, dict | None]:
    """Everything checked before any node is contacted: settings, model and image size, data, method.

    `given`: the run-config keys the user gave (Flower's `override_config`), for `resolve`.
    """
    settings, checkpoint = resolve(run_config, overrides, given)
    build_model(settings.model, settings.task_set, image_size=settings.image_size)  # fails early on a bad size
    settings = prepare_data(settings)
    return settings, build_method(settings), checkpoint


def make_server_app(overrides: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose settings are the app defaults, the run config, then `overrides` (for tests)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        given = grid.run.override_config  # what `flwr run --run-config` gave, without the app defaults
        settings, method, checkpoint = preflight(dict(context.run_config), overrides, given)
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
