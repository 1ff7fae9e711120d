"""The `mas-flower` command line: version, help on every option with its default, and `run`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

from mas_flower import __version__
from mas_flower.tools.cli import app, main

SUBCOMMANDS = {"synth", "check-data", "split", "bench", "report", "deploy-local", "run", "config"}


def test_version(capsys: pytest.CaptureFixture) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mas-flower {__version__}"


def test_every_option_has_help_and_shows_its_default() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group) and set(group.commands) == SUBCOMMANDS
    for name, command in group.commands.items():
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"{name} {param.opts}: no help text"
                if not param.required and not param.is_flag:
                    assert param.show_default is not False or "(default: " in param.help, \
                        f"{name} {param.opts}: default not shown"


def test_usage_and_input_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench"]) == 2
    assert "Missing argument 'SUITE'" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "none.yaml"), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == f"mas-flower bench: error: {tmp_path / 'none.yaml'}: suite file not found"
    assert main(["split", str(tmp_path / "a.json"), "--splits", "2", "--method", "foo"]) == 2


def test_run_starts_and_stops_its_own_superlink_and_reports_failure(private_homes, tmp_path: Path) -> None:
    """`python -m mas_flower run` = `mas-flower run`: a run that fails its preflight exits 1, and the
    SuperLink it started under its own FLWR_HOME is stopped and said so."""
    from mas_flower.tools.launch import superlink_marker
    from mas_flower.tools.processes import pids_with_arg

    flwr_home = tmp_path / "flwr"
    done = subprocess.run([sys.executable, "-m", "mas_flower", "run", "--nodes", "2", "--flwr-home", str(flwr_home),
                           "--", "--run-config", f"clients-per-round=2 data-root='{tmp_path / 'no-data'}'"],
                          capture_output=True, text=True, timeout=300)  # valid settings, missing data: the app fails
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"FLWR_HOME={flwr_home}" in done.stdout and "a SuperLink of this run's own on 127.0.0.1:" in done.stdout
    assert "stopped this run's SuperLink: pid(s) " in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].endswith(": finished:failed")
    assert not pids_with_arg(superlink_marker(flwr_home))
