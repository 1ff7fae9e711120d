"""The real `flwr run` path: managed SuperLink, simulation, private FLWR_HOME; final status checked."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mas_flower.launch import launch
from tests.flower_processes import free_port, pids_with_arg, port_in_use, stop_process_group


def test_flwr_run_completes_and_writes_results(private_homes, tiny_federation: Path, tmp_path: Path) -> None:
    """Its own FLWR_HOME and its own free ports (never Flower's defaults 39091/39093), so it runs
    beside any other SuperLink on the machine."""
    flwr_home = tmp_path / "flwr"
    flwr_home.mkdir()
    ports = {"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": free_port(), "FLWR_LOCAL_CONTROL_API_PORT": free_port()}
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           **{k: str(v) for k, v in ports.items()}}
    out = tmp_path / "out"
    run_config = (f"method='fedavg' task-set='sdk' num-rounds=2 clients-per-round=2 batch-size=4 image-size=32 "
                  f"data-root='{tiny_federation}' output-dir='{out}' run-name='flwr-run'")
    try:
        run_id, status = launch(nodes=3, cpus_per_node=1, gpus_per_node=0, extra=["--run-config", run_config],
                                env=env)
    finally:
        for pid in pids_with_arg(str(flwr_home / "local-superlink")):
            stop_process_group(pid)
    assert status == "finished:completed", f"run {run_id} ended {status}"
    results = json.loads((out / "flwr-run" / "results.json").read_text())
    assert results["method"] == "fedavg" and set(results["test_loss"]) == set("sdk")
    assert len(results["history"]) == 2
    assert not pids_with_arg(str(flwr_home / "local-superlink")), "the SuperLink this test started is still running"
    assert not any(port_in_use(port) for port in ports.values())
