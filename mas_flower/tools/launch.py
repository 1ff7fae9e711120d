"""Run the app locally with `flwr run` on a managed SuperLink of its own, and report how it really ended.

Flower's managed simulation SuperLink binds 127.0.0.1:39091/39093 whatever `FLWR_HOME` is, and
`flwr run` submits to whatever answers there: a SuperLink left behind by another checkout would
run our ServerApp in its own Python environment. So every launch here gets its own `FLWR_HOME`,
its own free ports (`FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`, `FLWR_LOCAL_CONTROL_API_PORT`), and the
SuperLink that `flwr run` started under that home is stopped, by PID, at the end.

`flwr run --stream` exits 0 even when the ServerApp crashed, so after streaming the logs this asks
the SuperLink for the final status of the run whose id `flwr run` printed, and exits non-zero
unless it completed.

Stopping: the SuperLink runs detached from the terminal (its own session), so Ctrl-C or `kill`
reaches only `flwr run`, never the run itself. Inside `stop_on_signals`, SIGINT and SIGTERM raise
`Stopped`; `launch_run` then asks the SuperLink to stop the run (`flwr stop`) and stops, by PID,
every process it saw descend from `flwr run` and the SuperLink (Ray's included, even those whose
parent already died), and the caller says where the run's checkpoint is and how to resume it.

`--run-config` is read before anything starts with Flower's own parser (`flwr.common.config`, the
only Flower module imported here) and validated as the ServerApp would (`mas_flower.defaults`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mas_flower.settings import Settings, home
from mas_flower.tools.processes import Watch, pids_with_arg, stop_trees, watching

#: The app folder (its pyproject.toml is what `flwr run` reads) in a checkout.
APP_DIR = Path(__file__).resolve().parents[2]
RUN_ID = re.compile(r"Successfully started run (\d+)")
#: What the ServerApp logs once it has chosen (or, resuming, reopened) the run folder.
RUN_DIR = re.compile(r"run folder: (.+?)\s*$")
#: A round the ServerApp logged: `[all-in-one] round 3/20 ...`.
ROUND = re.compile(r"\[([^\]\s]+)\] round (\d+)/(\d+)")
#: Seconds `flwr stop` may take; seconds between SIGTERM and SIGKILL for the run's processes.
FLWR_STOP_TIMEOUT = 15.0
STOP_GRACE = 3.0
COMPLETED = "finished:completed"


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived (raised in the main thread inside `stop_on_signals`).

    A BaseException, as KeyboardInterrupt, so that code recording a failed run and going on
    (`except Exception`) lets it through. `launch_run` fills in what the stream said (run id, run
    folder, last round) and what it stopped (`report`, lines for the user) before re-raising.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.run_id: int | None = None
        self.run_dir: Path | None = None
        self.last_round: str | None = None
        self.report: list[str] = []

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, the first SIGINT or SIGTERM raises `Stopped` in the main thread; later ones are
    ignored so that the clean-up it starts runs to its end (it is bounded: a few seconds). Outside the
    main thread (signals cannot be caught there) this does nothing."""
    signals = (signal.SIGINT, signal.SIGTERM)

    def ignore(signum: int, frame: Any) -> None:  # os.write: print() here could re-enter a busy stream
        os.write(2, f"({signal.Signals(signum).name} again: still stopping the run's processes)\n".encode())

    def stop(signum: int, frame: Any) -> None:
        for sig in signals:
            signal.signal(sig, ignore)
        raise Stopped(signum)

    try:
        previous = {sig: signal.signal(sig, stop) for sig in signals}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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


@dataclass
class Launched:
    """How one `flwr run` ended, and what its streamed log said."""

    run_id: int
    status: str  # e.g. 'finished:completed', 'finished:failed'
    run_dir: Path | None = None  # the ServerApp's "run folder: ..." line
    last_round: str | None = None  # the last round it logged, e.g. 'all-in-one 3/20'


#: Flower's hints about the simulated federation's size, which this command sets itself (`--nodes`):
#: "Since flwr 1.32, default simulated SuperNodes changed from 10 to 2" and how to change it. Not shown.
FEDERATION_SIZE_HINTS = re.compile(r"default simulated SuperNodes changed from|To change federation size, use the "
                                   r"following command|flwr federation simulation-config")


def shown(line: str) -> bool:
    """Whether a line of `flwr run --stream` is passed on: all but `FEDERATION_SIZE_HINTS`, which would
    contradict the federation line that follows them ("Federation ... (6 simulated SuperNodes)")."""
    return FEDERATION_SIZE_HINTS.search(line) is None


class _Progress:
    """What the streamed log has said so far: run id, run folder, last round."""

    def __init__(self) -> None:
        self.run_id: int | None = None
        self.run_dir: Path | None = None
        self.last_round: str | None = None

    def feed(self, line: str) -> None:
        if self.run_id is None and (m := RUN_ID.search(line)):
            self.run_id = int(m.group(1))
        elif self.run_dir is None and (m := RUN_DIR.search(line)):
            self.run_dir = Path(m.group(1))
        elif m := ROUND.search(line):
            self.last_round = f"{m.group(1)} {m.group(2)}/{m.group(3)}"


def launch(nodes: int, cpus_per_node: float, gpus_per_node: float, extra: list[str],
           env: dict[str, str] | None = None, app_dir: Path = APP_DIR) -> tuple[int, str]:
    """Start the run with `flwr run`, stream its logs to stdout, return (run id, final status).

    Uses the SuperLink that `env` points at (see `own_superlink`); raises RuntimeError if no run
    started, and `Stopped` (after stopping the run) on SIGINT/SIGTERM inside `stop_on_signals`.
    """
    done = launch_run(nodes, cpus_per_node, gpus_per_node, extra, env, app_dir)
    return done.run_id, done.status


def launch_run(nodes: int, cpus_per_node: float, gpus_per_node: float, extra: list[str],
               env: dict[str, str] | None = None, app_dir: Path = APP_DIR) -> Launched:
    """`launch`, returning what the stream said as well (`Launched`).

    Every process descending from `flwr run`, and from the SuperLink of `env`'s FLWR_HOME, is
    remembered while the run streams; on `Stopped` the run is stopped (`halt`) and `Stopped` re-raised
    with the run id, run folder and last round filled in.
    """
    env = dict(env or os.environ)
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    # `flwr run` starts `flower-superlink` by name: make this environment's scripts findable first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    federation = f"num-supernodes={nodes} client-resources-num-cpus={cpus_per_node:g} " \
                 f"client-resources-num-gpus={gpus_per_node:g}"
    cmd = [flwr_command(), "run", str(app_dir), "--stream", "--federation-config", federation, *extra]
    marker = superlink_marker(Path(env["FLWR_HOME"]).resolve()) if env.get("FLWR_HOME") else None
    progress, watch = _Progress(), Watch()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=app_dir)
    try:
        watch.add([proc.pid])
        with watching(watch, lambda: pids_with_arg(marker) if marker else []):
            assert proc.stdout is not None
            for line in proc.stdout:
                progress.feed(line)  # first: a signal may come as soon as the line is shown
                if shown(line):
                    sys.stdout.write(line)
                    sys.stdout.flush()
            proc.wait()
        if progress.run_id is None:
            raise RuntimeError(f"`{' '.join(cmd)}` did not start a run (exit code {proc.returncode})")
        status = run_status(progress.run_id, env, app_dir)
    except Stopped as stop:
        stop.run_id, stop.run_dir, stop.last_round = progress.run_id, progress.run_dir, progress.last_round
        halt(stop, watch, env, app_dir)
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
        proc.wait()
    return Launched(progress.run_id, status, progress.run_dir, progress.last_round)


def halt(stop: Stopped, watch: Watch, env: dict[str, str], app_dir: Path = APP_DIR) -> None:
    """Stop the run of `stop.run_id` through its SuperLink (`flwr stop`) and every process in `watch`
    (SIGTERM, SIGKILL after `STOP_GRACE` s); record what was done in `stop.report`.

    `flwr stop` needs a second or more to start, so meanwhile the run's own processes (`flwr run`,
    the ServerApp, Ray) are stopped; the SuperLink (and what is left) once `flwr stop` has answered.
    """
    t0 = time.monotonic()
    asking = _start_flwr_stop(stop.run_id, env, app_dir) if stop.run_id is not None else None
    superlinks = pids_with_arg(superlink_marker(Path(env["FLWR_HOME"]).resolve())) if env.get("FLWR_HOME") else []
    pids = set(watch.stop(STOP_GRACE, spare=superlinks))
    if asking is not None and stop.run_id is not None:
        stop.report.append(_finish_flwr_stop(stop.run_id, asking, t0))
    pids.update(watch.stop(STOP_GRACE))
    stop.report.append(f"stopped {len(pids)} process(es) of this run by PID (`flwr run`, its SuperLink, "
                       f"the ServerApp, Ray), {time.monotonic() - t0:.1f} s after {stop.name}")
    for line in stop.report:
        print(line, flush=True)


def _start_flwr_stop(run_id: int, env: dict[str, str], app_dir: Path) -> subprocess.Popen | None:
    try:
        return subprocess.Popen([flwr_command(), "stop", str(run_id)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env, cwd=app_dir)
    except OSError:
        return None


def _finish_flwr_stop(run_id: int, asking: subprocess.Popen, t0: float) -> str:
    """Wait for `flwr stop` (at most until `FLWR_STOP_TIMEOUT` s after `t0`); one line saying how it went."""
    try:
        out, _ = asking.communicate(timeout=max(0.1, FLWR_STOP_TIMEOUT - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        asking.kill()
        asking.communicate()
        return f"`flwr stop {run_id}` did not answer within {FLWR_STOP_TIMEOUT:g} s"
    if asking.returncode == 0:
        return f"run {run_id} stopped (`flwr stop {run_id}`, {time.monotonic() - t0:.1f} s)"
    last = (out or "").strip().splitlines()[-1:] or ["no output"]
    return f"`flwr stop {run_id}` failed (exit code {asking.returncode}: {last[0]})"


# Run config, checked before anything starts -----------------------------------------------------------

def run_config_args(flwr_args: list[str]) -> list[str]:
    """The values of every `--run-config` / `-c` among `flwr run` arguments, in order (as click reads
    them: `--run-config V`, `--run-config=V`, `-c V`, `-cV`). ValueError for an option without a value."""
    values: list[str] = []
    args = iter(flwr_args)
    for arg in args:
        if arg in ("--run-config", "-c"):
            value = next(args, None)
            if value is None:
                raise ValueError(f"`{arg}` needs a value, e.g. {arg} \"num-rounds=4\"")
            values.append(value)
        elif arg.startswith("--run-config="):
            values.append(arg.partition("=")[2])
        elif arg.startswith("-c") and not arg.startswith("--") and len(arg) > 2:
            values.append(arg[2:])
    return values


def parse_run_config_args(values: list[str]) -> dict[str, Any]:
    """The run-config overrides that `flwr run --run-config V1 --run-config V2 ...` sends, read with
    Flower's own parser (`key=value` pairs with TOML values, or one .toml file), so that exactly what
    `flwr run` accepts is accepted. ValueError naming the text or file otherwise."""
    import click
    from flwr.common.config import parse_config_args

    shown = " ".join(values)
    try:
        return dict(parse_config_args(values or None))
    except click.ClickException as err:
        raise ValueError(f"--run-config {shown!r}: {err.message}") from None
    except FileNotFoundError:
        raise ValueError(f"--run-config {shown!r}: no such TOML file") from None
    except (OSError, ValueError) as err:  # tomllib's TOMLDecodeError is a ValueError
        raise ValueError(f"--run-config {shown!r}: {err}") from None


def check_run_config(flwr_args: list[str], nodes: int) -> Settings:
    """The settings a `flwr run` with `flwr_args` on `nodes` simulated SuperNodes would run with,
    validated as the ServerApp does, before anything starts.

    Raises ValueError naming the key and value: an unknown key (with the key it resembles), a value
    of the wrong type or out of range, more clients per round than nodes, a `resume` folder without
    a checkpoint or that already finished.
    """
    from mas_flower.defaults import load_settings
    from mas_flower.results import RESULTS_FILE
    from mas_flower.strategy.checkpoint import CHECKPOINT_FILE

    if nodes < 1:
        raise ValueError(f"--nodes={nodes} must be at least 1")
    settings = load_settings(parse_run_config_args(run_config_args(flwr_args)))
    if settings.resume:  # the checkpoint's own settings will apply: only the folder can be checked here
        folder = Path(settings.resume)
        if not (folder / CHECKPOINT_FILE).is_file():
            raise ValueError(f"resume={settings.resume!r}: {folder / CHECKPOINT_FILE} does not exist "
                             "(nothing to resume)")
        if (folder / RESULTS_FILE).is_file():
            raise ValueError(f"resume={settings.resume!r}: this run already finished ({RESULTS_FILE} exists)")
    elif settings.clients_per_round > nodes:
        raise ValueError(f"clients-per-round={settings.clients_per_round} is more than the {nodes} simulated "
                         "nodes (--nodes, or MAS_FLOWER_NODES for ./run.sh)")
    return settings


# What to tell the user ----------------------------------------------------------------------------------

def resume_hint(run_dir: Path | None, last_round: str | None = None, nodes: int | None = None,
                run_sh: bool = True) -> str:
    """Where a stopped or failed run's folder and checkpoint are, and the exact `resume=` run-config
    (with the commands to pass it: `mas-flower run --nodes <nodes>`, and ./run.sh when `run_sh`) that
    continues it; or why there is nothing to resume."""
    from mas_flower.results import RESULTS_FILE
    from mas_flower.strategy.checkpoint import CHECKPOINT_FILE

    if run_dir is None:
        return "the ServerApp had not named a run folder yet: nothing to resume (start the run again)"
    if (run_dir / RESULTS_FILE).is_file():
        return f"run folder: {run_dir} (finished: {RESULTS_FILE} is there)"
    checkpoint = run_dir / CHECKPOINT_FILE
    if not checkpoint.is_file():
        return f"run folder: {run_dir}; no checkpoint yet (no round had ended): nothing to resume, start it again"
    lines = [f"run folder: {run_dir}",
             f"checkpoint: {checkpoint}" + (f" (last round logged: {last_round})" if last_round else "")]
    config = resume_config(run_dir)
    if config is None:
        lines.append(f"to resume: a TOML file with resume = {json.dumps(str(run_dir))}, passed as --run-config FILE "
                     "(this path holds both kinds of quotes)")
        return "\n".join(lines)
    node_opt = f" --nodes {nodes}" if nodes is not None else ""
    lines.append(f"to resume, run with the run-config: {config}")
    if run_sh:
        lines.append(f"  ./run.sh --run-config {shell_word(config)}")
    lines.append(f"  mas-flower run{node_opt} -- --run-config {shell_word(config)}")
    return "\n".join(lines)


def shell_word(text: str) -> str:
    """`text` as one shell word: in double quotes when nothing in it is special there, else `shlex.quote`."""
    return f'"{text}"' if not set(text) & set('"$`\\!') else shlex.quote(text)


def resume_config(run_dir: Path) -> str | None:
    """`resume='<run_dir>'` as flwr's `key=value` parser reads it back; None if no quoting can carry it."""
    from mas_flower.tools.deploy import toml_string

    try:
        return f"resume={toml_string(str(run_dir))}"
    except ValueError:
        return None


def default_flwr_home() -> Path:
    """A fresh FLWR_HOME for one run: `$MAS_FLOWER_HOME/flwr/run-<time>-<pid>` (kept: it holds the SuperLink log)."""
    return home() / "flwr" / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def run_app(nodes: int, cpus_per_node: float = 1.0, gpus_per_node: float = 0.0, extra: list[str] | None = None,
            flwr_home: Path | None = None, app_dir: Path = APP_DIR) -> int:
    """What `./run.sh` and `mas-flower run` do: one simulated run on a SuperLink of its own.

    The run config among `extra` is validated first (ValueError, nothing started). Returns 0 if the
    run completed, 1 if not (with the resume hint when it left a checkpoint), 128 + the signal
    number after SIGINT/SIGTERM (the run and all its processes stopped, then the resume hint).
    """
    check_app_dir(app_dir)
    extra = list(extra or [])
    check_run_config(extra, nodes)
    flwr_home = Path(flwr_home or default_flwr_home()).resolve()
    with stop_on_signals():
        try:
            with own_superlink(flwr_home) as env:
                done = launch_run(nodes, cpus_per_node, gpus_per_node, extra, env, app_dir)
        except Stopped as stop:
            if leftover := pids_with_arg(superlink_marker(flwr_home)):  # stopped before `flwr run` streamed
                stop_trees(leftover, grace=STOP_GRACE)
            print(f"stopped by {stop.name}" + (f": run {stop.run_id}" if stop.run_id is not None else
                                                 " before a run started"))
            print(resume_hint(stop.run_dir, stop.last_round, nodes))
            return stop.exit_code
    print(f"run {done.run_id}: {done.status}")
    if done.status != COMPLETED and done.run_dir is not None:
        print(resume_hint(done.run_dir, done.last_round, nodes))
    return 0 if done.status == COMPLETED else 1

