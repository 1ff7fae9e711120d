"""A run never reports a result over fewer buildings than it claims: a killed client, duplicate claims."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from mas_flower.data import list_buildings
from mas_flower.strategy.roster import CoverageError
from tests.test_faults import BASE, run_faulty


def kill_actor_when_it_trains(fault_dir: Path, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the Ray ClientApp actor that wrote `actor-pid` (checked by its command line), as the
    kernel's out-of-memory killer would."""
    marker = fault_dir / "actor-pid"
    while not stop.is_set():
        if marker.exists() and marker.read_text():
            proc = psutil.Process(int(marker.read_text()))
            assert "ClientAppActor" in " ".join(proc.cmdline()), proc.cmdline()
            proc.send_signal(signal.SIGKILL)
            killed.append(proc.pid)
            return
        time.sleep(0.05)


def run_with_a_killed_actor(monkeypatch, tiny_federation: Path, out: Path, killed: list[int], **extra) -> None:
    stop = threading.Event()
    watcher = threading.Thread(target=kill_actor_when_it_trains, args=(out, stop, killed), daemon=True)
    watcher.start()
    try:
        run_faulty(monkeypatch, "1=killed",
                   {**BASE, "clients-per-round": 4, "reply-timeout": 30.0, "data-root": str(tiny_federation),
                    "output-dir": str(out), "run-name": "killed", **extra}, nodes=4)
    finally:
        stop.set()
        watcher.join()
    assert len(killed) == 1, "the actor was never killed"


def test_a_killed_client_fails_the_run_naming_the_buildings_the_test_missed(monkeypatch, private_homes,
                                                                           tiny_federation: Path,
                                                                           tmp_path: Path) -> None:
    """The dead actor stays in Flower's pool and fails every message it gets: the test cannot cover
    every building, so the run fails (test-coverage=all) and writes no results.json."""
    killed: list[int] = []
    with pytest.raises(CoverageError, match=r"the test covered [0-3] of the 4 buildings holding test data") as err:
        run_with_a_killed_actor(monkeypatch, tiny_federation, tmp_path, killed)
    assert "ActorDiedError" in str(err.value)  # why each missing building is missing
    missing = str(err.value).partition("missing ")[2]
    assert any(b in missing for b in list_buildings(tiny_federation)[:4])
    assert not (tmp_path / "killed" / "results.json").exists()
    assert (tmp_path / "killed" / "checkpoint.pt").exists()


def test_with_test_coverage_any_results_name_what_each_evaluation_covered(monkeypatch, private_homes,
                                                                         tiny_federation: Path,
                                                                         tmp_path: Path) -> None:
    run_with_a_killed_actor(monkeypatch, tiny_federation, tmp_path, [], **{"test-coverage": "any"})
    results = json.loads((tmp_path / "killed" / "results.json").read_text())
    buildings = list_buildings(tiny_federation)[:4]  # partitions 0-3
    assert results["test_coverage"] == "any"
    missing = results["test_missing"]
    assert missing and set(missing) <= set(buildings)
    for name, covered in results["test_buildings"].items():
        assert covered and set(covered) | set(missing) == set(buildings), name
    first = results["history"][0]["federations"]["all"]  # before the kill: every node validated
    assert (first["val_nodes"], first["val_of"], first["val_estimate"]) == (4, 4, False) and "val_missing" not in first
    later = [e for h in results["history"][1:] for e in h["federations"].values()]
    # What each validation missed, named, and counted: an estimate over fewer nodes.
    assert any(e.get("val_missing") and e["val_estimate"] and e["val_nodes"] + len(e["val_missing"]) == 4
               for e in later)
    assert all(set(e.get("val_missing", [])) <= set(buildings) for e in later)


def test_two_nodes_claiming_one_building_are_refused_naming_both(monkeypatch, private_homes, tiny_federation: Path,
                                                                tmp_path: Path) -> None:
    taken = list_buildings(tiny_federation)[0]
    with pytest.raises(ValueError, match=rf"two nodes claim the same building .*building '{taken}': nodes \d+, \d+"):
        run_faulty(monkeypatch, f"2=building={taken}",
                   {**BASE, "clients-per-round": 2, "data-root": str(tiny_federation), "output-dir": str(tmp_path),
                    "run-name": "twice"}, nodes=3)
    assert not (tmp_path / "twice").exists()  # refused before the run folder was made
