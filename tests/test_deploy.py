"""deploy-local with real processes: a SuperLink and SuperNodes on loopback, each node told its building
through --node-config; afterwards no process it started may be alive and its ports must be free."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest

from mas_flower.data import list_buildings
from mas_flower.tasks import TASKS
from mas_flower.tools.deploy import pick_ports, plan_deployment, port_free, run_deployment
from mas_flower.tools.processes import process_alive
from mas_flower.tools.security import make_node_key, make_tls

SMALL = "method='mas' task-set='sdk' splits=2 num-rounds=2 merge-rounds=1 affinity-rounds=1 batch-size=4 image-size=32"


def leftovers(pid_file: Path) -> list[dict]:
    """Processes listed in the deployment's pid file that still run (same pid and start time)."""
    listed = json.loads(pid_file.read_text())["processes"]
    return [p for p in listed if process_alive(p["pid"], p["starttime"])]


def kill_leftovers(pid_file: Path) -> None:
    """Test-side safety net for a failing test: never leave this test's processes behind."""
    if pid_file.is_file():
        for p in leftovers(pid_file):
            os.kill(p["pid"], signal.SIGKILL)


def assert_all_stopped(pid_file: Path, ports: list[int]) -> dict:
    state = json.loads(pid_file.read_text())
    assert state["phase"] == "stopped"
    assert not leftovers(pid_file), f"still running: {leftovers(pid_file)}"
    assert all(port_free(p) for p in ports), f"a port of {ports} is still taken"
    return state


def test_deploy_local_runs_mas_on_three_nodes_over_tls_with_node_auth(private_homes, tiny_federation: Path,
                                                                      tmp_path: Path) -> None:
    """The full deployment, secured: TLS everywhere, only registered SuperNodes admitted, and two extra
    nodes (an unregistered key, no key) refused (the insecure path runs in the other deployment tests)."""
    out = tmp_path / "out"
    config = f"{SMALL} clients-per-round=2 output-dir='{out}' run-name='deploy'"
    result = run_deployment(3, config, data_root=str(tiny_federation), timeout=300, grace=5, auth=True)
    pid_file = result.deploy_dir / "pids.json"
    try:
        assert result.exit_code == 0, result.error
        assert_secured(result)
        assert result.status == "finished:completed"
        assert result.results_dir == out / "deploy"
        results = json.loads((out / "deploy" / "results.json").read_text())
        # Without partition-ids, the only way nodes learn their building is --node-config: the first 3 of 5.
        first_three = list_buildings(tiny_federation)[:3]
        assert results["nodes"] == first_three
        assert results["method"] == "mas" and len(results["splits"]) == 2 and set(results["test_loss"]) == set("sdk")
        assert len(results["history"]) == 2
        # Flower's own traffic figures for the run hold ours (payload bytes of the records) and a little
        # more (metadata, framing, discovery queries): measured 14.62 MB against 14.53 MB on such a run.
        traffic = json.loads((out / "deploy" / "flower_traffic.json").read_text())
        assert traffic == result.traffic
        assert traffic["flower_inbound_mb"] >= traffic["comm_mb_up"] > 0
        assert traffic["flower_outbound_mb"] >= traffic["comm_mb_down"] > 0
        assert traffic["comm_mb"] == pytest.approx(results["comm_mb"]) and 1.0 <= traffic["ratio"] < 1.5
        state = assert_all_stopped(pid_file, result.ports)
        nodes = [s for s in state["started"] if s["name"].startswith("supernode-")]
        assert [n["building"] for n in nodes] == first_three
        cmds = {p["pid"]: p["cmd"] for p in state["processes"]}
        for node, building in zip(nodes, first_three, strict=True):
            assert f"--node-config building='{building}' data-root='{tiny_federation}'" in cmds[node["pid"]]
        names = " ".join(cmds.values())
        assert "flower-superexec" in names, "descendants (SuperExecs) were not tracked"
        assert set(result.pids) == set(cmds)
        assert not any("--insecure" in cmd for cmd in cmds.values())
        link = next(s for s in state["started"] if s["name"] == "superlink")
        assert all(f in cmds[link["pid"]] for f in ("--ssl-ca-certfile", "--ssl-certfile", "--enable-supernode-auth"))
        assert all("--root-certificates" in cmds[n["pid"]] and "--auth-supernode-private-key" in cmds[n["pid"]]
                   for n in nodes)
    finally:
        kill_leftovers(pid_file)


def assert_secured(result) -> None:
    """TLS was on, the registered nodes got their ids, the unregistered ones never got one and were refused."""
    logs = result.deploy_dir / "logs"
    link_log = (logs / "superlink.log").read_text(errors="replace")
    assert f"running on https://127.0.0.1:{result.ports[0]}" in link_log
    assert 'root-certificates = "' in (result.deploy_dir / "flwr-home" / "config.toml").read_text()
    node_ids = {int(m) for log in logs.glob("supernode-*.log")
                for m in re.findall(r"SuperNode ID: (\d+)", log.read_text(errors="replace"))}
    assert len(result.registered) == 3 and node_ids == set(result.registered)
    assert set(result.refused) == {"unregistered-key", "no-key"} and 0 not in result.refused.values()
    for name in result.refused:
        assert "SuperNode ID" not in (logs / f"{name}.log").read_text(errors="replace")
    # The SuperLink's own refusals: the unknown key cannot activate, the keyless node cannot register itself.
    assert "No SuperNode found with the given public key" in link_log
    assert "ApiError:2001" in link_log  # FLEET_SUPERNODE_REGISTRATION_DISABLED


def test_auth_check_fails_when_the_superlink_admits_an_unregistered_node(private_homes, tiny_federation: Path,
                                                                         tmp_path: Path, monkeypatch) -> None:
    """The refusal check can fail: a SuperLink started without `--enable-supernode-auth` (TLS still on)
    lets the keyless node register itself, and deploy-local stops before any run, saying so."""
    import mas_flower.tools.deploy as deploy

    real = deploy.superlink_security
    monkeypatch.setattr(deploy, "superlink_security",
                        lambda certs, auth: [f for f in real(certs, auth) if f != "--enable-supernode-auth"])
    out = tmp_path / "out"
    result = run_deployment(1, f"{SMALL} clients-per-round=1 output-dir='{out}'", data_root=str(tiny_federation),
                            timeout=240, grace=5, auth=True)
    pid_file = result.deploy_dir / "pids.json"
    try:
        assert result.exit_code == 1 and result.run_id is None
        assert "node authentication is not enforced" in (result.error or ""), result.error
        assert "no-key was not refused" in result.error
        state = assert_all_stopped(pid_file, result.ports)
        assert "flwr-run" not in [s["name"] for s in state["started"]]
    finally:
        kill_leftovers(pid_file)


def test_throwaway_certificate_serves_tls_on_loopback_and_only_to_its_ca(tmp_path: Path) -> None:
    """A real TLS handshake with the generated files: trusted for 127.0.0.1 and localhost, and rejected by a
    client that trusts another CA."""
    files = make_tls(tmp_path / "certs")
    other = make_tls(tmp_path / "other")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.cert, files.key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve(connections: int) -> None:
            for _ in range(connections):
                conn, _addr = listener.accept()
                with suppress(ssl.SSLError, OSError), server.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")

        thread = threading.Thread(target=serve, args=(3,), daemon=True)
        thread.start()
        for name in ("127.0.0.1", "localhost"):
            client = ssl.create_default_context(cafile=str(files.ca))
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    client.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.recv(2) == b"ok"
        stranger = ssl.create_default_context(cafile=str(other.ca))
        with pytest.raises(ssl.SSLCertVerificationError), \
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            stranger.wrap_socket(raw, server_hostname="127.0.0.1")
        thread.join(timeout=10)
    assert oct(files.key.stat().st_mode & 0o777) == "0o600"
    key = make_node_key(tmp_path / "keys" / "node")
    assert key.public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert key.private.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")


def test_unknown_run_config_key_fails_before_any_process_starts(private_homes, tiny_federation: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mas_flower", "deploy-local", "--nodes", "2", "--data-root", str(tiny_federation),
           "--auth", "--run-config", f"num_rounds=2 clients-per-round=2 output-dir='{out}'"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "unknown key 'num_rounds' (did you mean 'num-rounds'?)" in done.stderr
    # The deployment folder (certificates, keys, pids.json) is made before the first process starts.
    assert "SuperLink" not in done.stdout and not (out / "deployments").exists()


def test_deploy_local_failed_run_exits_nonzero_and_stops_everything(private_homes, tiny_federation: Path,
                                                                      tmp_path: Path) -> None:
    # Nodes whose dataset lacks the keypoints folders: the ServerApp fails when they cannot load their data.
    broken = tmp_path / "broken"
    broken.mkdir()
    for entry in tiny_federation.iterdir():
        if entry.name not in TASKS["k"].folder_names:
            (broken / entry.name).symlink_to(entry)
    out = tmp_path / "out"
    result = run_deployment(2, f"{SMALL} clients-per-round=2 output-dir='{out}'", data_root=str(broken),
                            timeout=240, grace=5)
    pid_file = result.deploy_dir / "pids.json"
    try:
        assert result.exit_code == 1
        assert result.status == "finished:failed"
        assert result.results_dir is None
        assert_all_stopped(pid_file, result.ports)
    finally:
        kill_leftovers(pid_file)


@pytest.mark.parametrize(("sig", "when", "code"), [(signal.SIGINT, "running", 130), (signal.SIGTERM, "starting", 143)])
def test_deploy_local_interrupted_stops_everything(private_homes, tiny_federation: Path, tmp_path: Path,
                                                   sig: signal.Signals, when: str, code: int) -> None:
    """Ctrl-C once the run is going, SIGTERM while the nodes are still connecting: both clean up."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mas_flower", "deploy-local", "--nodes", "2", "--data-root", str(tiny_federation),
           "--timeout", "240", "--run-config", f"{SMALL} clients-per-round=2 output-dir='{out}'"]
    log = tmp_path / "deploy-local.out"
    with log.open("wb") as sink:  # a file, not a pipe: a full pipe would block the launcher
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=dict(os.environ))
    pid_file = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            found = list((out / "deployments").glob("*/pids.json"))
            if found:
                pid_file = found[0]
                state = json.loads(pid_file.read_text())
                nodes = [s for s in state["started"] if s["name"].startswith("supernode-")]
                if state["phase"] == when and (when == "running" or len(nodes) == 2):
                    break
            time.sleep(0.2)
        assert pid_file is not None and proc.poll() is None, "deploy-local never reached the phase to interrupt"
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert proc.returncode == code, log.read_text(errors="replace")[-3000:]
        state = assert_all_stopped(pid_file, json.loads(pid_file.read_text())["ports"])
        assert len(state["processes"]) >= 3  # the SuperLink and both SuperNodes, at least
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if pid_file is not None:
            kill_leftovers(pid_file)


def test_plan_generates_the_synthetic_federation_where_the_serverapp_looks(private_homes) -> None:
    from mas_flower.defaults import load_settings, synthetic_root

    config = "synthetic-buildings=3 synthetic-views=2 synthetic-size=16 clients-per-round=2"
    plan = plan_deployment(2, config, data_root="")
    assert plan.data_root == synthetic_root(load_settings({"synthetic-buildings": 3, "synthetic-views": 2,
                                                           "synthetic-size": 16, "clients-per-round": 2}))
    assert plan.buildings == list_buildings(plan.data_root)[:2]
    assert plan.run_config == config  # the ServerApp finds the same synthetic folder by itself


def test_bad_requests_fail_before_anything_starts(private_homes, tiny_federation: Path, tmp_path: Path) -> None:
    root = str(tiny_federation)
    with pytest.raises(ValueError, match="clients-per-round=4 is more than the 3 nodes"):
        plan_deployment(3, "clients-per-round=4", root)
    with pytest.raises(ValueError, match="holds only 5 buildings"):
        plan_deployment(6, "clients-per-round=2", root)
    with pytest.raises(ValueError, match="unknown key 'no-such-key'"):
        plan_deployment(2, "clients-per-round=2 no-such-key=1", root)
    with pytest.raises(ValueError, match=r"unknown key 'num_rounds' \(did you mean 'num-rounds'\?\)"):
        plan_deployment(2, "clients-per-round=2 num_rounds=2", root)
    plan = plan_deployment(2, "clients-per-round=2", root)
    assert plan.run_config == f"clients-per-round=2 data-root='{root}'"
    with pytest.raises(ValueError, match="port 3909[01]"):
        pick_ports(3, base_port=39090)
    ports = pick_ports(4)
    assert len(set(ports)) == 4 and all(port_free(p) for p in ports)


def test_process_set_names_the_dead_process_and_stops_every_descendant(tmp_path: Path) -> None:
    from mas_flower.tools.deploy import DeployError, _wait
    from mas_flower.tools.processes import ProcessSet

    procs = ProcessSet(tmp_path / "pids.json")
    env = dict(os.environ)
    # A parent whose children start their own session (as Flower's SuperExec does): a process-group kill misses it.
    procs.start("tree", ["sh", "-c", "setsid sleep 300 & sleep 300 & wait"], env, tmp_path / "tree.log", tmp_path)
    procs.start("supernode-1", ["sh", "-c", "sleep 1; echo 'boom: cannot reach the SuperLink'; exit 3"], env,
                tmp_path / "node.log", tmp_path, building="beechwood")
    with pytest.raises(DeployError, match=r"supernode-1 \(pid \d+, building beechwood\) exited with code 3(.|\n)*boom"):
        _wait(lambda: False, procs, time.monotonic() + 30, "2 SuperNodes to connect")
    assert len(procs.alive()) == 3  # sh and both sleeps, found through /proc
    assert procs.stop(grace=2) == []
    assert not leftovers(tmp_path / "pids.json")


@pytest.mark.parametrize(("sig", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, "Terminated")])
def test_a_swallowed_interrupt_is_raised_again_by_the_next_wait(tmp_path: Path, sig: signal.Signals, raised) -> None:
    """A Ctrl-C that lands while the launcher forks is dropped by Python ("Exception ignored in
    _releaseLock"); deploy-local must still stop, at its next poll."""
    from mas_flower.tools.deploy import DeployError, Terminated, _signal_scope, _wait
    from mas_flower.tools.processes import ProcessSet

    expected = Terminated if raised == "Terminated" else raised
    with _signal_scope():
        with suppress(KeyboardInterrupt):  # stands in for the at-fork hook that swallows it
            os.kill(os.getpid(), sig)
            time.sleep(5)
        with pytest.raises(expected):
            try:
                _wait(lambda: False, ProcessSet(tmp_path / "pids.json"), time.monotonic() + 2, "nothing")
            except DeployError:
                pytest.fail("the interrupt was lost: _wait ran to its timeout")
