"""Run the app locally with `flwr run` on a managed SuperLink of its own, and report how it really ended.

Flower's managed simulation SuperLink binds 127.0.0.1:39091/39093 whatever `FLWR_HOME` is, and
`flwr run` submits to whatever answers there: a SuperLink left behind by another checkout would
run our ServerApp in its own Python environment. So every launch here gets its own `FLWR_HOME`,
its own free ports (`FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`, `FLWR_LOCAL_CONTROL_API_PORT`), and the
SuperLink that `flwr run` started under that home is stopped, by PID, at the end.

`flwr run --stream` exits 0 even when the ServerApp crashed, so after streaming the logs this asks
the SuperLink for the final status of the run whose id `flwr run` printed, and exits non-zero
unless it completed. It only shells out to the `flwr` command; the library never imports Flower.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mas_flower.processes import pids_with_arg, stop_trees
from mas_flower.settings import home

#: The app folder (its pyproject.toml is what `flwr run` reads) in a checkout.
APP_DIR = Path(__file__).resolve().parents[1]
RUN_ID = re.compile(r"Successfully started run (\d+)")


def flwr_command() -> str:
    candidate = Path(sys.executable).with_name("flwr")
    return str(candidate) if candidate.exists() else "flwr"


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports the OS says are free now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def superlink_marker(flwr_home: Path) -> str:
    """What the command line of the SuperLink that `flwr` starts under `flwr_home` contains (its log path)."""
    return str(flwr_home / "local-superlink")


@contextmanager
def own_superlink(flwr_home: Path, env: dict[str, str] | None = None,
                  say: Callable[[str], None] = print) -> Iterator[dict[str, str]]:
    """The environment for `flwr` commands that use a managed SuperLink of their own.

    Yields `env` (default: os.environ) with FLWR_HOME=`flwr_home` and free ports for the SuperLink's
    HTTP and Control APIs. `flwr run` starts the SuperLink on first use; on exit every process whose
    command line names this FLWR_HOME's SuperLink folder is stopped with its descendants (SIGTERM,
    then SIGKILL), and `say` tells what was started and stopped.
    """
    flwr_home = Path(flwr_home).resolve()
    flwr_home.mkdir(parents=True, exist_ok=True)
    marker = superlink_marker(flwr_home)
    if leftover := pids_with_arg(marker):  # from an earlier, killed invocation with this home
        say(f"stopping a SuperLink left running under {flwr_home}: pid(s) {', '.join(map(str, stop_trees(leftover)))}")
    http_port, control_port = free_ports(2)
    out = {**(env or os.environ), "FLWR_HOME": str(flwr_home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
           "FLWR_LOCAL_CONTROL_API_PORT": str(control_port), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION":
           (env or os.environ).get("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")}
    say(f"Flower: FLWR_HOME={flwr_home}; a SuperLink of this run's own on 127.0.0.1:{http_port} "
        f"(Control API {control_port}), log {flwr_home / 'local-superlink' / 'superlink.log'}")
    try:
        yield out
    finally:
        pids = pids_with_arg(marker)
        if pids:
            stopped = stop_trees(pids)
            say(f"stopped this run's SuperLink: pid(s) {', '.join(map(str, pids))}"
                f"{f' and {len(stopped) - len(pids)} process(es) it started' if len(stopped) > len(pids) else ''}")
        else:
            say("no SuperLink of this run is left running")


def check_app_dir(app_dir: Path = APP_DIR) -> None:
    """FileNotFoundError unless `app_dir` is a Flower app folder (`flwr run` reads its pyproject.toml).

    From a wheel install the package has no app folder beside it: runs need a checkout (`--app-dir`).
    """
    if not (app_dir / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{app_dir} holds no pyproject.toml, so `flwr run` cannot run the app from it: "
                                "give the app folder (a checkout of mas-flower)")


def run_status(run_id: int, env: dict[str, str] | None = None, app_dir: Path = APP_DIR) -> str:
    """The status string of run `run_id`, e.g. 'finished:completed' or 'finished:failed'."""
    out = subprocess.run([flwr_command(), "ls", "--run-id", str(run_id), "--format", "json"],
                         capture_output=True, text=True, check=True, env=env, cwd=app_dir).stdout
    runs = json.loads(out[out.index("{"):])["runs"]
    match = [r for r in runs if int(r["run-id"]) == run_id]
    if not match:
        raise RuntimeError(f"the SuperLink lists no run {run_id} (it listed {[r['run-id'] for r in runs]})")
    return str(match[0]["status"])


def launch(nodes: int, cpus_per_node: float, gpus_per_node: float, extra: list[str],
           env: dict[str, str] | None = None, app_dir: Path = APP_DIR) -> tuple[int, str]:
    """Start the run with `flwr run`, stream its logs to stdout, return (run id, final status).

    Uses the SuperLink that `env` points at (see `own_superlink`); raises RuntimeError if no run started.
    """
    env = dict(env or os.environ)
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    # `flwr run` starts `flower-superlink` by name: make this environment's scripts findable first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    federation = f"num-supernodes={nodes} client-resources-num-cpus={cpus_per_node:g} " \
                 f"client-resources-num-gpus={gpus_per_node:g}"
    cmd = [flwr_command(), "run", str(app_dir), "--stream", "--federation-config", federation, *extra]
    run_id = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=app_dir) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if run_id is None and (m := RUN_ID.search(line)):
                run_id = int(m.group(1))
    if run_id is None:
        raise RuntimeError(f"`{' '.join(cmd)}` did not start a run (exit code {proc.returncode})")
    return run_id, run_status(run_id, env, app_dir)


def default_flwr_home() -> Path:
    """A fresh FLWR_HOME for one run: `$MAS_FLOWER_HOME/flwr/run-<time>-<pid>` (kept: it holds the SuperLink log)."""
    return home() / "flwr" / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def run_app(nodes: int, cpus_per_node: float = 1.0, gpus_per_node: float = 0.0, extra: list[str] | None = None,
            flwr_home: Path | None = None, app_dir: Path = APP_DIR) -> int:
    """What `./run.sh` and `mas-flower run` do: one simulated run on a SuperLink of its own; 0 if it completed."""
    check_app_dir(app_dir)
    with own_superlink(flwr_home or default_flwr_home()) as env:
        run_id, status = launch(nodes, cpus_per_node, gpus_per_node, list(extra or []), env, app_dir)
    print(f"run {run_id}: {status}")
    return 0 if status == "finished:completed" else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m mas_flower.launch [OPTIONS] [-- FLWR_ARGS]`: the same as `mas-flower run`."""
    from mas_flower.cli import main as cli

    return cli(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
