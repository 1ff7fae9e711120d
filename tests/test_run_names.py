"""Finding one's runs: run folder names carry the server strategy and a user's run-name, and `report`
titles run folders outside a suite each by its own settings (not as one merged "suite")."""

from __future__ import annotations

import json
import time
from pathlib import Path

from PIL import Image

from mas_flower.defaults import load_settings
from mas_flower.results import new_run_dir, run_name
from mas_flower.tools.report import make_report, provenance
from mas_flower.tools.summary import Run

#: 2025-01-02 03:04:05 local time, so the stamp is known by hand.
WHEN = time.mktime((2025, 1, 2, 3, 4, 5, 0, 0, -1))


def test_the_server_strategy_is_in_the_name_unless_it_is_fedavg() -> None:
    adam = load_settings({}, {"server-strategy": "fedadam", "task-set": "sdk", "seed": 3, "splits": 3})
    assert run_name(adam, when=WHEN) == "mas-x3@fedadam-sdk-seed3-20250102-030405"
    plain = load_settings({}, {"task-set": "sdk", "seed": 3})
    assert run_name(plain, when=WHEN) == "mas-x2-sdk-seed3-20250102-030405"
    # a method without splits, over FedProx
    prox = load_settings({}, {"method": "fedavg", "server-strategy": "fedprox", "task-set": "dk"})
    assert run_name(prox, when=WHEN) == "fedavg@fedprox-dk-seed0-20250102-030405"
    # a ServerApp passing its own Flower strategy names it (the settings still say fedavg)
    assert run_name(plain, server_strategy="FedAdam", when=WHEN) == "mas-x2@fedadam-sdk-seed3-20250102-030405"
    assert run_name(plain, server_strategy="My Adam/2", when=WHEN) == "mas-x2@my_adam_2-sdk-seed3-20250102-030405"


def test_a_users_run_name_is_the_folder_name_and_never_reused(tmp_path: Path) -> None:
    settings = load_settings({}, {"server-strategy": "fedyogi", "run-name": "my-yogi", "output-dir": str(tmp_path)})
    assert run_name(settings) == "my-yogi"
    first, second = new_run_dir(settings), new_run_dir(settings)
    assert (first, second) == (tmp_path / "my-yogi", tmp_path / "my-yogi-2")
    assert first.is_dir() and second.is_dir()
    unnamed = new_run_dir(load_settings({}, {"server-strategy": "fedyogi", "output-dir": str(tmp_path)}))
    assert unnamed.parent == tmp_path and unnamed.name.startswith("mas-x2@fedyogi-sdnkt-seed0-")


def _results(method: str, seed: int, rounds: int, lr: float, total: float) -> dict:
    """A finished run's results.json with what the report reads (two validated rounds)."""
    losses = {"s": total / 2, "d": total / 2}
    return {"method": method, "task_set": "sd", "seed": seed, "splits": None, "server_strategy": "fedavg",
            "config": {"splits": 2, "model": "tiny", "image-size": 32, "num-rounds": rounds, "lr": lr},
            "total_test_loss": total, "test_loss": losses, "client_train_seconds": 1.0, "wall_seconds": 2.0,
            "energy_kwh": 0.001, "co2_g": 0.1,
            "history": [{"round": r, "federations": {"all": {"val_loss": {"s": 1.0 / r, "d": 2.0 / r}}}}
                        for r in (1, 2)]}


def _run_folder(parent: Path, name: str, results: dict) -> Path:
    folder = parent / name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_loose_run_folders_are_titled_each_by_its_own_settings(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    short = _run_folder(outputs, "fedavg-sd-seed0-a", _results("fedavg", 0, 10, 0.2, 3.0))
    long = _run_folder(outputs, "fedavg-sd-seed1-b", _results("fedavg", 1, 20, 0.1, 2.0))
    twin = _run_folder(outputs, "fedavg-sd-seed2-c", _results("fedavg", 2, 20, 0.1, 2.5))
    runs = [Run(p, json.loads((p / "results.json").read_text())) for p in (short, long, twin)]
    assert provenance(runs) == ("run fedavg-sd-seed0-a · tiny, 32 px, R=10, lr 0.2 · seed 0 | "
                                "runs fedavg-sd-seed1-b, fedavg-sd-seed2-c · tiny, 32 px, R=20, lr 0.1 · seeds 1,2")
    # never "suite outputs", never settings merged as R=10/20
    written = make_report([short, long], tmp_path / "figures")
    titles = {p.name: Image.open(p).text["Title"] for p in written}
    assert set(titles) == {"validation-loss.png", "loss-vs-energy.png"}
    for title in titles.values():
        assert title == ("run fedavg-sd-seed0-a · tiny, 32 px, R=10, lr 0.2 · seed 0 | "
                         "run fedavg-sd-seed1-b · tiny, 32 px, R=20, lr 0.1 · seed 1")


def test_runs_of_a_suite_keep_the_suite_title(tmp_path: Path) -> None:
    runs_dir = tmp_path / "quick-sd" / "runs"
    runs = [Run(p, json.loads((p / "results.json").read_text())) for p in (
        _run_folder(runs_dir, "fedavg-sd-seed0", _results("fedavg", 0, 10, 0.2, 3.0)),
        _run_folder(runs_dir, "fedavg-sd-seed1", _results("fedavg", 1, 10, 0.2, 2.0)),
    )]
    loose = Run(tmp_path / "elsewhere" / "mine", _results("fedavg", 4, 30, 0.2, 2.0))
    assert provenance(runs) == "suite quick-sd · tiny, 32 px, R=10, lr 0.2 · seeds 0,1"
    assert provenance([*runs, loose]) == ("suite quick-sd · tiny, 32 px, R=10, lr 0.2 · seeds 0,1 | "
                                          "run mine · tiny, 32 px, R=30, lr 0.2 · seed 4")
