"""`mas-flower deploy-local`: a real Flower deployment (one SuperLink, N SuperNodes) on loopback.

A rehearsal of running on edge boxes: every node is its own `flower-supernode` process told its
building through `--node-config`, the run goes through `flwr run` to the SuperLink's Control API, and
the final status is read back with `flwr ls` (`flwr run --stream` exits 0 even when the ServerApp
crashed). Flower is only driven through its executables, never imported. Every process started,
and everything those spawn, is stopped at the end: on success, failure, timeout, Ctrl-C or SIGTERM.

With `tls`, a throw-away CA and server certificate (mas_flower.tools.security) secure every connection to
the SuperLink. With `auth` (implies `tls`), the SuperLink only admits SuperNodes whose public keys were
registered with `flwr supernode register`; to prove it, two extra SuperNodes are started too and must
both be refused before the run begins: one with a key nobody registered, one with no key at all (which
a SuperLink without authentication would let register itself).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import tomllib

from mas_flower.data import list_buildings
from mas_flower.results import RESULTS_FILE, fresh_dir
from mas_flower.settings import Settings, home
from mas_flower.tools.processes import ProcessSet, Started
from mas_flower.tools.security import NodeKey, TlsFiles, make_node_key, make_tls

APP_DIR = Path(__file__).resolve().parents[2]
CONNECTION = "deploy"
#: The SuperNodes `auth` starts to check that the SuperLink refuses them (see _start_unregistered).
INTRUDERS = ("unregistered-key", "no-key")
#: The managed simulation SuperLink's HTTP and Control ports (`flwr run` starts it on demand).
RESERVED_PORTS = frozenset({39091, 39093})
STARTUP_SECONDS = 180.0
GRACE_SECONDS = 10.0
STATUS_SECONDS = 30.0
TAIL_LINES = 25
RUN_ID = re.compile(r"Successfully started run (\d+)")
#: What the ServerApp logs about its run folder (server_app/app.py, mas_flower/strategy/outputs.py).
RESULTS_LINE = re.compile(r"(?:run folder:|results in|results written to) (/.+?)\s*$")
_PAIR = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")  # the pattern `flwr run --run-config` uses


class DeployError(RuntimeError):
    """The deployment could not run to the end (a process died, a timeout); the message says which."""


class Terminated(KeyboardInterrupt):
    """SIGTERM to the launcher: unwinds like Ctrl-C so that the same cleanup runs."""


@dataclass
class Plan:
    """What will run, decided (and validated) before any process starts."""

    settings: Settings
    run_config: str  # passed to `flwr run --run-config`
    data_root: Path
    buildings: list[str]  # node i holds buildings[i]
    output_root: Path
    tls: bool = False
    auth: bool = False  # SuperNode authentication (needs TLS)


@dataclass
class DeployResult:
    """How a deployment ended; `pids` lists every process it started or saw spawned."""

    exit_code: int
    deploy_dir: Path
    status: str | None = None
    run_id: int | None = None
    results_dir: Path | None = None
    error: str | None = None
    pids: list[int] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)
    registered: list[int] = field(default_factory=list)  # node ids of the registered keys (with auth)
    refused: dict[str, int] = field(default_factory=dict)  # unregistered SuperNode -> its exit code (with auth)
    #: Flower's own traffic figures for the run beside ours (`compare_traffic`), when both exist.
    traffic: dict[str, Any] = field(default_factory=dict)


def deploy_local(nodes: int, run_config: str = "", data_root: str = "", base_port: int = 0,
                 timeout: float = 3600.0, tls: bool = False, auth: bool = False) -> int:
    """Run the app on a local SuperLink + `nodes` SuperNodes; exit code 0 only for `finished:completed`."""
    return run_deployment(nodes, run_config, data_root, base_port, timeout, tls=tls, auth=auth).exit_code


def run_deployment(nodes: int, run_config: str = "", data_root: str = "", base_port: int = 0,
                   timeout: float = 3600.0, grace: float = GRACE_SECONDS, out: TextIO | None = None,
                   tls: bool = False, auth: bool = False) -> DeployResult:
    """Start, run, stop; bad input raises ValueError before any process starts. `auth` implies `tls`."""
    out = out or sys.stdout
    if timeout <= 0:
        raise ValueError(f"timeout={timeout} must be positive")
    plan = plan_deployment(nodes, run_config, data_root)
    plan.tls, plan.auth = tls or auth, auth
    ports = pick_ports(nodes + 1 + (len(INTRUDERS) if auth else 0), base_port)  # the last: unregistered nodes'

    deploy_dir = fresh_dir(plan.output_root / "deployments" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    procs = ProcessSet(deploy_dir / "pids.json")
    procs.set_phase("starting", deploy_dir=str(deploy_dir), ports=ports, started_at=time.time())
    result = DeployResult(exit_code=1, deploy_dir=deploy_dir, ports=ports)
    _say(out, f"deployment folder: {deploy_dir}")
    with _signal_scope():
        try:
            _deploy(plan, procs, ports, time.monotonic() + timeout, result, out)
        except DeployError as err:
            result.error = str(err)
        except KeyboardInterrupt as err:
            result.exit_code = 143 if isinstance(err, Terminated) else 130
            result.error = "stopped by SIGTERM" if isinstance(err, Terminated) else "interrupted (Ctrl-C)"
        finally:
            _stop(procs, grace, result, out)
    if result.exit_code != 0:
        _say(out, f"deploy-local failed: {result.error or f'run ended {result.status}'}")
        for proc in procs.started:
            _say(out, f"--- last lines of {proc.log} ---\n{tail(proc.log)}")
    if result.results_dir is not None:
        _say(out, f"results: {result.results_dir}")
    _say(out, f"logs and pids.json: {deploy_dir}")
    return result


# Plan ------------------------------------------------------------------------------------------------

def parse_run_config(text: str) -> dict[str, Any]:
    """`key=value ...` (TOML values) exactly as `flwr run --run-config` reads it, or a .toml file path."""
    text = text.strip()
    if not text:
        return {}
    if text.endswith(".toml") and " " not in text:
        with Path(text).expanduser().open("rb") as f:
            return dict(tomllib.load(f))
    pairs = _PAIR.findall(text)
    try:
        return dict(tomllib.loads("\n".join(f"{k} = {v}" for k, v in pairs)))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"--run-config {text!r}: not `key=value` pairs with TOML values ({err})") from err


def toml_string(value: str) -> str:
    """A TOML string literal that the `key=value` parsers of flwr read back unchanged."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value and "\\" not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} holds both kinds of quotes: it cannot be passed in a Flower config string")


def plan_deployment(nodes: int, run_config: str, data_root: str) -> Plan:
    """Validate the settings and find (or generate) the data, so that nothing starts for nothing."""
    from mas_flower.defaults import load_settings, synthetic_root

    if nodes < 1:
        raise ValueError(f"--nodes={nodes} must be at least 1")
    overrides = parse_run_config(run_config)
    settings = load_settings(overrides)
    if settings.clients_per_round > nodes:
        raise ValueError(f"clients-per-round={settings.clients_per_round} is more than the {nodes} nodes "
                         "(the ServerApp would wait for nodes that never come)")
    extra = ""
    if data_root:
        root = Path(data_root).expanduser().resolve()
        if settings.data_root and Path(settings.data_root) != root:
            raise ValueError(f"--data-root={root} and run-config data-root={settings.data_root} differ: give one")
        if not settings.data_root:
            extra = f" data-root={toml_string(str(root))}"
    elif settings.data_root:
        root = Path(settings.data_root)
    else:  # where the ServerApp itself will look, so that both sides see the same buildings
        from mas_flower.synthetic import generate_dataset

        root = synthetic_root(settings)
        generate_dataset(root, buildings=settings.synthetic_buildings, views=settings.synthetic_views,
                         size=settings.synthetic_size, seed=settings.seed)
    buildings = list_buildings(root)
    if nodes > len(buildings):
        raise ValueError(f"--nodes={nodes} but {root} holds only {len(buildings)} buildings")
    output_root = Path(settings.output_dir) if settings.output_dir else home() / "outputs"
    return Plan(settings, (run_config.strip() + extra).strip(), root, buildings[:nodes], output_root)


def pick_ports(count: int, base_port: int = 0) -> list[int]:
    """`count` loopback ports: base_port, base_port+1, ... (each must be free), else free ones from the OS."""
    if base_port:
        ports = list(range(base_port, base_port + count))
        if ports[0] < 1024 or ports[-1] > 65535:
            raise ValueError(f"--base-port={base_port}: ports {ports[0]}..{ports[-1]} must lie in 1024..65535")
        for port in ports:
            if port in RESERVED_PORTS or not port_free(port):
                raise ValueError(f"--base-port={base_port}: port {port} is in use or reserved for the managed "
                                 f"simulation SuperLink ({', '.join(map(str, sorted(RESERVED_PORTS)))})")
        return ports
    with ExitStack() as stack:  # hold every socket until all are chosen, so the ports differ
        ports = []
        while len(ports) < count:
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            if (port := s.getsockname()[1]) not in RESERVED_PORTS:
                ports.append(port)
        return ports


def port_free(port: int) -> bool:
    """Nobody listens on 127.0.0.1:`port` (nor on all interfaces)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# Processes -------------------------------------------------------------------------------------------

def flower_bin(name: str) -> str:
    """A Flower executable of this environment (beside its python), else on PATH."""
    candidate = Path(sys.executable).with_name(name)
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"`{name}` not found beside {sys.executable} nor on PATH (is flwr installed?)")
    return found


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process: a private FLWR_HOME, no dependency installs, no network."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    for key in ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API"):
        env.pop(key, None)  # they would open the legacy gRPC ports 9092/9093 besides the chosen one
    env.update(FLWR_HOME=str(flwr_home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               FLWR_DISABLE_UPDATE_CHECK="1", PYTHONUNBUFFERED="1")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    # SuperLink and SuperNode start `flower-superexec`, `flwr-serverapp`, ... by name.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def write_connection(flwr_home: Path, port: int, ca: Path | None = None) -> None:
    """`$FLWR_HOME/config.toml` with one connection to the SuperLink, the default: TLS trusting `ca`,
    else insecure."""
    security = f"root-certificates = {json.dumps(str(ca))}" if ca else "insecure = true"
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\n{security}\n')


def superlink_security(certs: TlsFiles | None, auth: bool) -> list[str]:
    """`flower-superlink` flags: its certificate and CA with TLS (plus node authentication), else --insecure."""
    if certs is None:
        return ["--insecure"]
    flags = ["--ssl-ca-certfile", str(certs.ca), "--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(certs.key)]
    return [*flags, "--enable-supernode-auth"] if auth else flags


def supernode_security(certs: TlsFiles | None, key: NodeKey | None) -> list[str]:
    """`flower-supernode` flags: with TLS, the CA to trust and a certificate for the node's own runtime API
    (which its SuperExec dials on 127.0.0.1), else --insecure; and the node's private key."""
    if certs is None:
        flags = ["--insecure"]
    else:
        flags = ["--root-certificates", str(certs.ca), "--ssl-certfile", str(certs.cert), "--ssl-keyfile",
                 str(certs.key), "--ssl-ca-certfile", str(certs.ca)]
    return [*flags, "--auth-supernode-private-key", str(key.private)] if key else flags


def _deploy(plan: Plan, procs: ProcessSet, ports: list[int], deadline: float, result: DeployResult,
            out: TextIO) -> None:
    deploy_dir = result.deploy_dir
    logs = deploy_dir / "logs"
    flwr_home = deploy_dir / "flwr-home"
    env = flower_env(flwr_home)
    certs = make_tls(deploy_dir / "certs") if plan.tls else None
    write_connection(flwr_home, ports[0], certs.ca if certs else None)
    link = procs.start("superlink", [flower_bin("flower-superlink"), *superlink_security(certs, plan.auth),
                                     "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
                                     "--port", str(ports[0])],
                       env, logs / "superlink.log", deploy_dir, port=ports[0])
    scheme = "https" if certs else "http"
    _say(out, f"SuperLink {scheme}://127.0.0.1:{ports[0]} (pid {link.pid})"
         + (f"; throw-away CA and certificate in {certs.ca.parent}" if certs else ""))
    startup = min(deadline, time.monotonic() + STARTUP_SECONDS)
    _wait(lambda: _healthy(ports[0], certs.ca if certs else None), procs, startup,
          f"the SuperLink to answer on {scheme}://127.0.0.1:{ports[0]}")
    keys = [_registered_key(deploy_dir, i, env, result) for i in range(len(plan.buildings))] if plan.auth else []
    # The nodes share this machine: split its cores between them, as the simulation's per-client CPUs do
    # (the ClientApp sizes torch's threads by OMP_NUM_THREADS), unless the caller already chose.
    threads = str(max(1, (os.cpu_count() or 1) // len(plan.buildings)))
    for i, (building, port) in enumerate(zip(plan.buildings, ports[1:len(plan.buildings) + 1], strict=True)):
        node_env = flower_env(deploy_dir / f"node-{i}" / "flwr-home")
        node_env.setdefault("OMP_NUM_THREADS", threads)
        node_config = f"building={toml_string(building)} data-root={toml_string(str(plan.data_root))}"
        node = procs.start(f"supernode-{i}", [flower_bin("flower-supernode"),
                                              *supernode_security(certs, keys[i] if keys else None),
                                              "--superlink", f"127.0.0.1:{ports[0]}", "--node-config", node_config,
                                              "--host", "127.0.0.1", "--port", str(port)],
                           node_env, logs / f"supernode-{i}-{building}.log", deploy_dir, building=building, port=port)
        _say(out, f"SuperNode {i}: building {building}, runtime API 127.0.0.1:{port} (pid {node.pid})")
    want = len(plan.buildings)
    ignore = _start_unregistered(plan, procs, certs, ports, deploy_dir, out) if plan.auth else ()
    _wait(lambda: len(online_node_ids(env)) >= want, procs, startup, f"{want} SuperNodes to connect", ignore=ignore)
    if ignore:
        _check_refused(ignore, procs, startup, env, result, out)
    procs.set_phase("running")
    _say(out, f"{want} SuperNodes connected; flwr run --run-config {plan.run_config!r}")
    run = procs.start("flwr-run", [flower_bin("flwr"), "run", str(APP_DIR), CONNECTION, "--stream",
                                   "--run-config", plan.run_config],
                      env, logs / "flwr-run.log", deploy_dir, stdout_pipe=True)
    seen: dict[str, str] = {}
    reader = threading.Thread(target=_relay, args=(run, out, seen), daemon=True)
    reader.start()
    _wait(run.exited, procs, deadline, "the run to finish", ignore=(run, *ignore))
    reader.join(timeout=10)
    if "run_id" not in seen:
        raise DeployError(f"`flwr run` exited with code {run.popen.returncode} without starting a run")
    result.run_id = int(seen["run_id"])
    result.status, record = final_status(result.run_id, env)
    result.results_dir = find_results(plan, seen.get("results"), procs.state.get("started_at", 0.0))
    _say(out, f"run {result.run_id}: {result.status}")
    result.traffic = compare_traffic(record, result.results_dir)
    if result.traffic:
        _say(out, result.traffic["summary"])
    result.exit_code = 0 if result.status == "finished:completed" else 1


def _relay(run: Started, out: TextIO, seen: dict[str, str]) -> None:
    """Copy `flwr run`'s output to its log and to `out`; note the run id and the results folder."""
    assert run.popen.stdout is not None
    with run.log.open("a", encoding="utf-8", errors="replace") as log:
        for raw in run.popen.stdout:
            line = raw.decode(errors="replace")
            log.write(line)
            log.flush()
            with suppress(ValueError, OSError):
                out.write(line)
                out.flush()
            if m := RUN_ID.search(line):
                seen.setdefault("run_id", m.group(1))
            if m := RESULTS_LINE.search(line):
                seen["results"] = m.group(1)


def _wait(done: Any, procs: ProcessSet, deadline: float, what: str, ignore: tuple[Started, ...] = ()) -> None:
    """Poll `done()` until true; fail fast, naming the process and its log, if a started process
    (other than those in `ignore`) exits. Raises again for a Ctrl-C / SIGTERM that a fork swallowed."""
    while True:
        _raise_caught()
        for proc in procs.started:
            if proc not in ignore and proc.exited():
                raise DeployError(f"{proc.name} (pid {proc.pid}{_describe(proc)}) exited with code "
                                  f"{proc.popen.returncode} while waiting for {what}; last lines of {proc.log}:\n"
                                  f"{tail(proc.log)}")
        procs.refresh()
        if done():
            return
        if time.monotonic() > deadline:
            raise DeployError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _describe(proc: Started) -> str:
    return "".join(f", {k} {v}" for k, v in proc.info.items())


def _healthy(port: int, ca: Path | None = None) -> bool:
    """The SuperLink answers /health (over HTTPS, verified against `ca`, when given)."""
    url = f"{'https' if ca else 'http'}://127.0.0.1:{port}/health"
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as reply:
            return 200 <= reply.status < 300
    except OSError:
        return False


def _flwr_json(args: list[str], env: dict[str, str], timeout: float = 60.0) -> dict[str, Any]:
    try:
        done = subprocess.run([flower_bin("flwr"), *args, CONNECTION, "--format", "json"], env=env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              cwd=env["FLWR_HOME"])
    except subprocess.TimeoutExpired as err:
        raise DeployError(f"`flwr {' '.join(args)}` did not answer within {timeout:g} s") from err
    text = done.stdout
    try:
        return dict(json.loads(text[text.index("{"):]))
    except ValueError as err:
        raise DeployError(f"`flwr {' '.join(args)}` gave no JSON (exit {done.returncode}): "
                          f"{(text + done.stderr)[-2000:]}") from err


def online_node_ids(env: dict[str, str]) -> set[int]:
    """The ids of the SuperNodes the SuperLink sees online (none while it cannot be asked)."""
    try:
        reply = _flwr_json(["supernode", "list"], env)
    except DeployError:
        return set()
    return {int(node["node-id"]) for node in reply.get("nodes", []) if node.get("status") == "online"}


# Node authentication ---------------------------------------------------------------------------------

def _registered_key(deploy_dir: Path, index: int, env: dict[str, str], result: DeployResult) -> NodeKey:
    """A fresh key pair for SuperNode `index`, its public key registered with the SuperLink."""
    key = make_node_key(deploy_dir / "keys" / f"supernode-{index}")
    reply = _flwr_json(["supernode", "register", str(key.public)], env)
    if not reply.get("success") or "node-id" not in reply:
        raise DeployError(f"`flwr supernode register {key.public}` failed: {reply}")
    result.registered.append(int(reply["node-id"]))
    return key


def _start_unregistered(plan: Plan, procs: ProcessSet, certs: TlsFiles | None, ports: list[int],
                        deploy_dir: Path, out: TextIO) -> tuple[Started, ...]:
    """The INTRUDERS (runtime APIs on the last ports): SuperNodes that trust the CA and claim building 0,
    but that nobody registered."""
    node_config = f"building={toml_string(plan.buildings[0])} data-root={toml_string(str(plan.data_root))}"
    started = []
    for name, port in zip(INTRUDERS, ports[-len(INTRUDERS):], strict=True):
        key = make_node_key(deploy_dir / "keys" / name) if name == "unregistered-key" else None
        node = procs.start(name, [flower_bin("flower-supernode"), *supernode_security(certs, key),
                                  "--superlink", f"127.0.0.1:{ports[0]}", "--node-config", node_config,
                                  "--host", "127.0.0.1", "--port", str(port)],
                           flower_env(deploy_dir / name / "flwr-home"), deploy_dir / "logs" / f"{name}.log", deploy_dir)
        started.append(node)
    _say(out, "authentication check: SuperNodes with an unregistered key and with no key (pids "
         f"{', '.join(str(n.pid) for n in started)}) must be refused")
    return tuple(started)


def _check_refused(intruders: tuple[Started, ...], procs: ProcessSet, deadline: float, env: dict[str, str],
                   result: DeployResult, out: TextIO) -> None:
    """Every intruder exited with an error and only registered node ids are online, else DeployError."""
    registered = set(result.registered)
    _wait(lambda: all(n.exited() for n in intruders) or not online_node_ids(env) <= registered, procs, deadline,
          "the unregistered SuperNodes to be refused", ignore=intruders)
    online = online_node_ids(env)
    admitted = [n for n in intruders if not n.exited() or n.popen.returncode == 0]
    if admitted or not online <= registered:
        raise DeployError(f"node authentication is not enforced: online node ids {sorted(online)}, registered "
                          f"{sorted(registered)}; {', '.join(n.name for n in admitted) or 'an unknown node'} "
                          "was not refused; last lines of "
                          + "\n".join(f"{n.log}:\n{tail(n.log)}" for n in admitted or intruders))
    result.refused = {n.name: n.popen.returncode for n in intruders}
    _say(out, f"authentication check passed: refused {result.refused} (exit codes); online: only the "
         f"{len(online)} registered node ids {sorted(online)}")


def final_status(run_id: int, env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The run's status from the SuperLink, waiting briefly for it to settle on `finished:...`, and
    the run's whole `flwr ls` record (empty if the SuperLink listed none)."""
    deadline = time.monotonic() + STATUS_SECONDS
    while True:
        reply = _flwr_json(["ls", "--run-id", str(run_id)], env)
        runs = reply.get("runs") or []
        status = str(runs[0]["status"]) if runs else f"unknown ({reply.get('error-message', reply)})"
        if status.startswith("finished") or time.monotonic() > deadline:
            return status, runs[0] if runs else {}
        time.sleep(1.0)


def compare_traffic(record: dict[str, Any], results_dir: Path | None) -> dict[str, Any]:
    """Flower's network traffic of the run (its `flwr ls` record: bytes in and out of the SuperLink) beside the
    run's own `comm_mb_*` (payload bytes of the records sent to and received from clients), written
    to `<run>/flower_traffic.json`. Flower's figures also count what ours leave out: message metadata
    and framing, the node-discovery queries, error replies and the ServerApp's own traffic with the
    SuperLink. Empty when either side is missing."""
    flower = record.get("network-traffic")
    if not flower or results_dir is None or not (results_dir / RESULTS_FILE).is_file():
        return {}
    ours = json.loads((results_dir / RESULTS_FILE).read_text())
    if ours.get("comm_mb") is None:
        return {}
    mb = 1e6
    report = {"flower_inbound_mb": flower["inbound-bytes"] / mb, "flower_outbound_mb": flower["outbound-bytes"] / mb,
              "flower_total_mb": flower["total-bytes"] / mb, "comm_mb_up": ours["comm_mb_up"],
              "comm_mb_down": ours["comm_mb_down"], "comm_mb": ours["comm_mb"]}
    report["ratio"] = report["flower_total_mb"] / report["comm_mb"] if report["comm_mb"] else None
    report["summary"] = (f"traffic: Flower counted {report['flower_total_mb']:.2f} MB (in "
                         f"{report['flower_inbound_mb']:.2f}, out {report['flower_outbound_mb']:.2f}); the run's "
                         f"records {report['comm_mb']:.2f} MB (up {report['comm_mb_up']:.2f}, down "
                         f"{report['comm_mb_down']:.2f})")
    (results_dir / "flower_traffic.json").write_text(json.dumps(report, indent=1))
    return report


def find_results(plan: Plan, logged: str | None, since: float) -> Path | None:
    """The run's folder: as the ServerApp logged it, else the newest one with results.json since the start."""
    if logged and (Path(logged) / RESULTS_FILE).is_file():
        return Path(logged)
    if not plan.output_root.is_dir():
        return None
    name = plan.settings.run_name
    candidates = [p.parent for p in plan.output_root.glob(f"*/{RESULTS_FILE}")
                  if p.stat().st_mtime >= since and (not name or p.parent.name.startswith(name))]
    return max(candidates, key=lambda p: (p / RESULTS_FILE).stat().st_mtime, default=None)


# Stopping --------------------------------------------------------------------------------------------

#: Signals caught inside _signal_scope. Python drops an exception raised while the main thread forks (in
#: logging's at-fork hook: "Exception ignored in _releaseLock"), so _wait raises again for what was caught.
_CAUGHT: list[int] = []


@contextmanager
def _signal_scope() -> Iterator[None]:
    """Inside: SIGTERM raises Terminated, Ctrl-C KeyboardInterrupt, and both are remembered for
    _raise_caught; the handlers are restored on the way out. Only the main thread can set handlers;
    elsewhere the caller's handling stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        _CAUGHT.append(signum)
        _raise_caught()

    _CAUGHT.clear()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _raise_caught() -> None:
    """Raise Terminated (SIGTERM) or KeyboardInterrupt (SIGINT) for a signal caught in _signal_scope."""
    if signal.SIGTERM in _CAUGHT:
        raise Terminated()
    if _CAUGHT:
        raise KeyboardInterrupt()


def _stop(procs: ProcessSet, grace: float, result: DeployResult, out: TextIO) -> None:
    """Stop everything, deaf to further Ctrl-C / SIGTERM so that the cleanup itself completes."""
    main = threading.current_thread() is threading.main_thread()
    while True:
        try:
            if main:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_IGN)
            procs.set_phase("stopping")
            result.survivors = procs.stop(grace)
            result.pids = sorted(procs.seen)
            procs.set_phase("stopped", survivors=result.survivors, exit_code=result.exit_code)
            break
        except KeyboardInterrupt:  # arrived before the handlers were swapped: just stop again
            continue
    if result.survivors:
        _say(out, f"could not stop pids {result.survivors}")
        result.exit_code = result.exit_code or 1


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64_000))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _say(out: TextIO, text: str) -> None:
    print(f"[deploy-local] {text}", file=out, flush=True)
