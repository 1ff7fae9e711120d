"""Configuration faults are named, key and value, before anything starts (docs/configuration.md,
section "When things go wrong")."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from mas_flower.defaults import load_settings
from mas_flower.tools.suite import load_suite
from tests.bench_suite import write_suite
from tests.test_app_simulation import run_app

GOOD = {"method": "fedavg", "task-set": "sdk", "num-rounds": 1, "clients-per-round": 2, "batch-size": 4,
        "image-size": 32}


def test_negative_seed_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"seed=-1 must be a non-negative integer"):
        load_settings({"seed": -1})


def test_negative_suite_seed_names_the_entry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"seeds\[1\]: must be a non-negative integer, got -1"):
        load_suite(write_suite(tmp_path / "suite.yaml", seeds=[0, -1]), check_data=False)


def test_unknown_energy_country_fails_before_data_or_run_folder(tiny_federation: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"energy-country='ZZ'.*energy-intensity"):
        load_settings({"energy-country": "ZZ"})
    load_settings({"energy-country": "ZZ", "energy-intensity": 300.0})  # a fixed intensity needs no country
    from server_app.app import preflight  # what the ServerApp runs before it touches data or nodes

    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"energy-country='ZZ'"):  # data-root missing: never reached
        preflight({}, {**GOOD, "energy-country": "ZZ", "data-root": str(tiny_federation / "missing"),
                       "output-dir": str(out), "run-name": "zz"})
    assert not out.exists()


def test_suite_float_written_as_yaml_string_is_accepted(tmp_path: Path) -> None:
    """PyYAML reads `1e-3` (no dot) as a string; flwr's TOML reads it as a float: the suite must too."""
    path = tmp_path / "suite.yaml"
    write_suite(path)
    path.write_text(path.read_text().replace("run_config:\n", "run_config:\n  lr: 1e-3\n", 1))
    suite = load_suite(path, check_data=False)
    assert suite.run_config["lr"] == 0.001 and isinstance(suite.run_config["lr"], float)
    path.write_text(path.read_text().replace("lr: 1e-3", "lr: fast"))
    with pytest.raises(ValueError, match=r"run_config\.lr: expected float, got 'fast'"):
        load_suite(path, check_data=False)


def test_bench_run_config_reaches_flower_intact(tmp_path: Path) -> None:
    """Spaces, both quotes and non-ASCII in the suite's output folder come out of flwr's own parser unchanged."""
    from mas_flower.tools.bench import write_run_config

    output = tmp_path / "out 'single' \"double\" ünïcødé ✓"
    suite = load_suite(write_suite(tmp_path / "suite.yaml", output=str(output)), check_data=False)
    run = suite.runs()[0]
    path = write_run_config(suite, run, tmp_path / "logs" / f"{run.name}.log")
    parsed = parse_config_args([str(path)])
    assert parsed == suite.run_config_for(run)
    assert parsed["output-dir"] == str(output / "runs")


def test_too_many_clients_per_round_fail_at_once_in_simulation(private_homes, tiny_federation: Path,
                                                                tmp_path: Path) -> None:
    """Default node-timeout (300 s): the simulation knows its node count, so it must not wait for it."""
    t0 = time.monotonic()
    with pytest.raises(Exception, match=r"clients-per-round=4 but only 3 nodes are simulated"):
        run_app({**GOOD, "clients-per-round": 4, "data-root": str(tiny_federation),
                 "output-dir": str(tmp_path / "out"), "run-name": "short"}, num_supernodes=3)
    assert time.monotonic() - t0 < 60


class _NoNodes:
    """A deployment grid that no SuperNode ever joins (only what `wait_for_nodes` asks of a Grid)."""

    def get_node_ids(self) -> list[int]:
        return []


def test_deployment_waits_for_nodes_logging_every_15_s(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    from mas_flower.strategy import roster

    assert 10 <= roster.LOG_EVERY <= 30
    monkeypatch.setattr(roster, "LOG_EVERY", 1.0)  # same cadence logic, scaled down 15x
    caplog.set_level(logging.INFO, logger="flwr")
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"clients-per-round=2 but only 0 nodes are connected after node-timeout=3"):
        roster.wait_for_nodes(_NoNodes(), need=2, timeout=3.0)
    assert 3.0 <= time.monotonic() - t0 < 6
    waits = [r for r in caplog.records if "waiting for nodes" in r.getMessage()]
    assert 3 <= len(waits) <= 4  # at 0, 1, 2 (and maybe 3) s: not one per poll


def test_failed_first_round_does_not_promise_a_checkpoint(monkeypatch, private_homes, tiny_federation: Path,
                                                          tmp_path: Path) -> None:
    from mas_flower.strategy.roster import RoundFailed
    from tests.test_faults import run_faulty

    with pytest.raises(RoundFailed, match=r"(?s)round 1: .*before any checkpoint was written") as err:
        run_faulty(monkeypatch, "0=raise,1=raise",
                   {**GOOD, "round-retries": 0, "data-root": str(tiny_federation), "output-dir": str(tmp_path),
                    "run-name": "first"}, nodes=2)
    assert "checkpoint is in" not in str(err.value)
    assert not (tmp_path / "first" / "checkpoint.pt").exists()
