"""The real `flwr run` path: a managed SuperLink of the run's own (private FLWR_HOME, free ports), stopped
by PID at the end; the final status read for the run id `flwr run` printed."""

from __future__ import annotations

import json
from pathlib import Path

import tomli_w

from mas_flower.tools.launch import launch, own_superlink, run_status, superlink_marker
from tests.flower_processes import pids_with_arg, port_in_use

FLOWER_DEFAULT_PORTS = (39091, 39093)


def test_flwr_run_on_its_own_superlink(private_homes, tiny_federation: Path, tmp_path: Path) -> None:
    flwr_home = tmp_path / "flwr"
    said: list[str] = []
    # A value flwr's `key=value` text cannot carry (both quotes, spaces, non-ASCII): passed as a TOML file.
    out = tmp_path / "out 'single' \"double\" ünï"
    good = tmp_path / "good.toml"
    good.write_text(tomli_w.dumps({"method": "fedavg", "task-set": "sdk", "num-rounds": 2, "clients-per-round": 2,
                                   "batch-size": 4, "image-size": 32, "data-root": str(tiny_federation),
                                   "output-dir": str(out), "run-name": "flwr-run"}))
    with own_superlink(flwr_home, say=said.append) as env:
        ports = {int(env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]), int(env["FLWR_LOCAL_CONTROL_API_PORT"])}
        assert not ports & set(FLOWER_DEFAULT_PORTS)
        bad_id, bad = launch(nodes=3, cpus_per_node=1, gpus_per_node=0, env=env,
                             extra=["--run-config", f"task-set='sdq' data-root='{tiny_federation}'"])
        run_id, status = launch(nodes=3, cpus_per_node=1, gpus_per_node=0, extra=["--run-config", str(good)],
                                env=env)
        assert port_in_use(int(env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]))  # the one it listens on itself
        superlinks = pids_with_arg(superlink_marker(flwr_home))
        assert superlinks
        # Two runs on this SuperLink now; the newest is listed first: each status is read by its own id.
        assert bad == run_status(bad_id, env) == "finished:failed"
        assert run_id != bad_id
    assert status == "finished:completed", f"run {run_id} ended {status}"
    results = json.loads((out / "flwr-run" / "results.json").read_text())
    assert results["method"] == "fedavg" and set(results["test_loss"]) == set("sdk")
    assert len(results["history"]) == 2
    assert not pids_with_arg(superlink_marker(flwr_home)), "the SuperLink this test started is still running"
    assert not any(port_in_use(p) for p in ports)
    assert f"FLWR_HOME={flwr_home.resolve()}" in said[0] and str(min(ports)) in said[0]
    assert said[-1].startswith("stopped this run's SuperLink: pid(s) ") and str(superlinks[0]) in said[-1]
