"""Faulty clients: the round aggregates what came, rejects poison, retries, and stops cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mas_flower.strategy.roster import RoundFailed

BASE = {"method": "mas", "task-set": "sdk", "splits": 2, "num-rounds": 3, "merge-rounds": 2, "affinity-rounds": 1,
        "affinity-every": 2, "batch-size": 4, "image-size": 32}


def run_faulty(monkeypatch, faults: str, overrides: dict, nodes: int) -> None:
    """One Ray actor per node, so that a sleeping node cannot hold up the healthy ones' messages."""
    from flwr.simulation import run_simulation

    from server_app.app import make_server_app
    from tests.fault_client import app as fault_app

    monkeypatch.setenv("MAS_FLOWER_TEST_FAULTS", faults)
    monkeypatch.setenv("MAS_FLOWER_TEST_FAULT_DIR", overrides["output-dir"])
    run_simulation(server_app=make_server_app(overrides), client_app=fault_app, num_supernodes=nodes,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": nodes, "num_gpus": 0}})


def test_failed_poisoned_and_slow_clients_are_left_out(monkeypatch, private_homes, tiny_federation: Path,
                                                       tmp_path: Path) -> None:
    run_faulty(monkeypatch, "0=raise,1=nan,2=sleep",
               {**BASE, "clients-per-round": 5, "min-replies": 2, "reply-timeout": 8.0, "lost-after": 4,
                "data-root": str(tiny_federation), "output-dir": str(tmp_path), "run-name": "faults"}, nodes=5)
    run = tmp_path / "faults"
    results = json.loads((run / "results.json").read_text())
    buildings = results["nodes"]  # sorted names = partition order of the synthetic federation
    for entry in results["history"]:
        failed = " | ".join(entry["failed"])
        assert f"{buildings[0]} (" in failed and "injected fault" in failed
        assert f"{buildings[1]} (" in failed and "NaN or Inf" in failed
        assert not any(f"{b} (" in failed for b in buildings[3:])
    # The slow node missed the first round's deadline and took part again once it had caught up.
    assert f"{buildings[2]} (all): no reply in time" in results["history"][0]["failed"]
    assert not any(buildings[2] in f for f in results["history"][-1]["failed"])
    for path in (run / "weights").glob("*.pt"):
        state = torch.load(path)
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path
    assert np.isfinite(results["total_test_loss"])


def test_too_few_replies_stop_the_run_with_its_checkpoint(monkeypatch, private_homes, tiny_federation: Path,
                                                          tmp_path: Path) -> None:
    with pytest.raises(RoundFailed,
                       match=r"(?s)round 2: fewer than min-replies=2 .*after 2 attempts.*its checkpoint is in"):
        run_faulty(monkeypatch, "1=late-raise,2=late-raise",
                   {**BASE, "clients-per-round": 3, "min-replies": 2, "round-retries": 1,
                    "data-root": str(tiny_federation), "output-dir": str(tmp_path), "run-name": "stops"}, nodes=3)
    run = tmp_path / "stops"
    assert (run / "checkpoint.pt").is_file()
    assert not (run / "results.json").exists()
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["progress"].next_round == 1 and len(checkpoint["ledger"].history) == 1


def test_nodes_on_other_machines_meter_their_own_training(monkeypatch, private_homes, tiny_federation: Path,
                                                          tmp_path: Path) -> None:
    """Every node claims another machine: the server does not meter its own, the nodes report theirs."""
    run_faulty(monkeypatch, "0=remote,1=remote,2=remote",
               {**BASE, "clients-per-round": 2, "data-root": str(tiny_federation), "output-dir": str(tmp_path),
                "run-name": "remote"}, nodes=3)
    results = json.loads((tmp_path / "remote" / "results.json").read_text())
    assert results["energy_parts"] == []  # the server's meter never started
    assert "3 remote node(s) metered their own training" in results["energy_method"]
    assert results["energy_kwh"] > 0
    assert results["energy_estimated"] is True  # this machine has no power sensor: the nodes said so
    assert results["co2_g"] == pytest.approx(results["energy_kwh"] * 210.89114, rel=1e-6)
