"""The `mas-flower` console command (typer + rich, as `flwr` itself): one subcommand per user-facing job.

Each subcommand only parses its options and calls the library, so everything here is also usable
from Python. Bad input (ValueError, FileNotFoundError) ends with one message on stderr, naming the
subcommand, and exit code 2; a job that ran and failed exits 1.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console

from mas_flower import __version__

app = typer.Typer(name="mas-flower", help=__doc__.split("\n")[0], no_args_is_help=True, add_completion=False,
                  rich_markup_mode="rich", context_settings={"help_option_names": ["-h", "--help"]})
_stderr = Console(stderr=True, soft_wrap=True, highlight=False)


def _version(value: bool) -> None:
    if value:
        print(f"mas-flower {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    """Federated multiple-task learning with MAS (Merge And Split) on Flower."""


def _job(name: str) -> Callable[[Callable[..., int]], Callable[..., None]]:
    """Register a subcommand whose function returns an exit code; bad input becomes exit code 2."""
    def wrap(func: Callable[..., int]) -> Callable[..., None]:
        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> None:
            try:
                code = func(*args, **kwargs)
            except (ValueError, FileNotFoundError) as err:
                _stderr.print(f"mas-flower {name}: error: {err}", markup=False)
                raise typer.Exit(2) from None
            raise typer.Exit(code)
        return app.command(name, help=func.__doc__)(run)
    return wrap


@_job("synth")
def synth(out: Annotated[Path, typer.Option(help="output folder (created)")],
          buildings: Annotated[int, typer.Option(help="number of buildings (one per SuperNode)")] = 8,
          views: Annotated[int, typer.Option(help="views per building")] = 48,
          size: Annotated[int, typer.Option(help="image side in pixels")] = 128,
          seed: Annotated[int, typer.Option(help="random seed of the generator")] = 0,
          workers: Annotated[int, typer.Option(help="processes rendering buildings in parallel")] = 1,
          twins: Annotated[str, typer.Option(help="twin tasks (copy, source), e.g. 'kt,ed': keypoints copied from "
                                             "edge texture, occlusion edges from depth; a split with a known "
                                             "answer")] = "") -> int:
    """Write a synthetic dataset in Taskonomy's layout and encodings."""
    from mas_flower.synthetic import generate_dataset
    from mas_flower.synthetic.twins import apply_twins, parse_twins

    if twins:
        parse_twins(twins)  # refuse a bad spec before rendering anything
    generate_dataset(out, buildings=buildings, views=views, size=size, seed=seed, workers=workers)
    if twins:
        apply_twins(out, twins)
    return 0


@_job("check-data")
def check_data(root: Annotated[Path, typer.Argument(help="dataset root (Taskonomy layout)")],
               tasks: Annotated[str | None, typer.Option(help="task letters to require (default: the domains "
                                                          "present)", show_default=False)] = None,
               headers_only: Annotated[bool, typer.Option(
                   "--headers-only", help="check PNG headers (bit depth, channels, size) without decoding: fast, "
                   "misses truncation")] = False) -> int:
    """Verify a Taskonomy-layout dataset before training on it.

    ROOT: the dataset root (Taskonomy layout). Exit code 1 if anything is wrong.
    """
    from mas_flower.data.check import check_dataset

    report = check_dataset(root, tasks, decode=not headers_only)
    print(report.format())
    return 0 if report.ok else 1


@_job("split")
def split(affinity: Annotated[Path, typer.Argument(help='JSON file {"tasks": "sdnkt", "matrix": [[...]]}')],
          splits: Annotated[int, typer.Option(help="number of groups x")],
          method: Annotated[str, typer.Option(click_type=click.Choice(["mas", "tag"]),
                                              help="how groups are chosen")] = "mas") -> int:
    """Choose task groups from an affinity matrix; print them as JSON.

    AFFINITY: a JSON file {"tasks": "sdnkt", "matrix": [[...]]}.
    """
    from mas_flower.splitting import split_from_file

    print(json.dumps(split_from_file(affinity, splits=splits, method=method)))
    return 0


@_job("bench")
def bench(suite: Annotated[Path, typer.Argument(help="suite YAML (see conf/)")],
          dry_run: Annotated[bool, typer.Option("--dry-run", help="validate the suite and list its runs, "
                                                "run nothing")] = False,
          output: Annotated[Path | None, typer.Option(help="output folder (default: the suite's `output` key, else "
                                                      "$MAS_FLOWER_HOME/bench/<suite file name>)",
                                                      show_default=False)] = None) -> int:
    """Run a suite of methods x task sets x seeds through Flower and tabulate it.

    SUITE: the suite YAML (see conf/). Exit code 1 if any run failed; 130/143 if stopped by
    Ctrl-C/SIGTERM (the running run is stopped with all its processes).
    """
    from mas_flower.tools.bench import run_suite

    return run_suite(suite, dry_run=dry_run, output=output)


@_job("report")
def report(runs: Annotated[list[Path], typer.Argument(help="run folders (with results.json) or suite output "
                                                      "folders")],
           out: Annotated[Path | None, typer.Option(help="folder for the figures (default: beside the first "
                                                    "input)", show_default=False)] = None) -> int:
    """PNG figures from run folders or suite folders; print their paths.

    RUNS: run folders (with results.json) or suite output folders.
    """
    from mas_flower.tools.report import make_report

    for path in make_report(list(runs), out):
        print(path)
    return 0


@_job("deploy-local")
def deploy_local(nodes: Annotated[int, typer.Option(help="SuperNodes to start, one building each")] = 3,
                 run_config: Annotated[str, typer.Option(help='run-config overrides, e.g. "num-rounds=4 '
                                                         'splits=2"')] = "",
                 data_root: Annotated[str, typer.Option(help="dataset for the nodes (default: the synthetic "
                                                        "federation)", show_default=False)] = "",
                 base_port: Annotated[int, typer.Option(help="first port to use (0: free ports)")] = 0,
                 timeout: Annotated[float, typer.Option(help="seconds before the run is stopped")] = 3600.0,
                 tls: Annotated[bool, typer.Option(help="TLS with a throw-away CA and server certificate")] = False,
                 auth: Annotated[bool, typer.Option(help="SuperNode authentication (implies --tls): register each "
                                                    "node's key; check that a node with an unregistered key is "
                                                    "refused")] = False) -> int:
    """SuperLink + N SuperNodes on loopback, run the app, stop them."""
    from mas_flower.tools.deploy import deploy_local as deploy

    return deploy(nodes=nodes, run_config=run_config, data_root=data_root, base_port=base_port, timeout=timeout,
                  tls=tls, auth=auth)


@_job("run")
def run(flwr_args: Annotated[list[str] | None, typer.Argument(
            help="further `flwr run` arguments, after `--` (e.g. -- --run-config \"method='fedavg'\")",
            show_default=False)] = None,
        nodes: Annotated[int, typer.Option(envvar="MAS_FLOWER_NODES", help="simulated SuperNodes (one building "
                                           "each)")] = 6,
        cpus_per_node: Annotated[float, typer.Option(help="CPUs per simulated client")] = 1.0,
        gpus_per_node: Annotated[float, typer.Option(help="share of a GPU per simulated client")] = 0.0,
        flwr_home: Annotated[Path | None, typer.Option(help="FLWR_HOME of this run's own SuperLink (default: "
                                                       "$MAS_FLOWER_HOME/flwr/run-<time>-<pid>)",
                                                       show_default=False)] = None,
        app_dir: Annotated[Path | None, typer.Option(help="the app folder `flwr run` reads (default: this "
                                                     "checkout)", show_default=False)] = None) -> int:
    """Run the app in simulation (what ./run.sh does) on a SuperLink of its own; exit 0 only if it completed.

    FLWR_ARGS: further `flwr run` arguments, after `--`, e.g. `-- --run-config "method='fedavg'"`.
    The run config is validated before anything starts (exit code 2). Ctrl-C or SIGTERM stops the
    run and all its processes, prints how to resume it, and exits 130/143.
    """
    from mas_flower.tools.launch import APP_DIR, run_app

    return run_app(nodes, cpus_per_node, gpus_per_node, flwr_args or [], flwr_home, app_dir or APP_DIR)


@_job("config")
def config(fmt: Annotated[str, typer.Option("--format", click_type=click.Choice(["text", "markdown"]),
                                           help="plain columns, or a Markdown table")] = "text") -> int:
    """Print every run-config key with its default and what it means (`--run-config "key=value ..."`)."""
    from mas_flower.defaults import describe_run_config

    print(describe_run_config(markdown=fmt == "markdown"))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); return its exit code."""
    try:
        code = app(args=argv, prog_name="mas-flower", standalone_mode=False)
    except click.ClickException as err:  # a usage error: unknown option, missing argument, bad choice
        err.show()
        return err.exit_code
    except click.exceptions.Abort:
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
