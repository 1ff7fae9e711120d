"""The real `flwr run` path: managed SuperLink, simulation, private FLWR_HOME; final status checked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mas_flower.launch import launch
from tests.flower_processes import pids_with_arg, port_in_use, stop_process_group

MANAGED_SUPERLINK_PORT = 39091


def test_flwr_run_completes_and_writes_results(private_homes, tiny_federation: Path, tmp_path: Path) -> None:
    if port_in_use(MANAGED_SUPERLINK_PORT):
        pytest.skip("a managed SuperLink from elsewhere already listens on 39091; this test must start its own")
    flwr_home = tmp_path / "flwr"
    flwr_home.mkdir()
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
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
    assert not port_in_use(MANAGED_SUPERLINK_PORT)
