"""A federation of many buildings: parallel generation that writes the same bytes, a start-up
line whose length does not grow with N, and nodes that list the data root once, not per message."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from client_app import node as node_mod
from mas_flower.data import DataError
from mas_flower.data import layout as layout_mod
from mas_flower.data.prepare import index_building
from mas_flower.strategy.protocol import DataInstruction
from mas_flower.strategy.roster import NAMED_BUILDINGS, federation_line
from mas_flower.synthetic import generate_dataset
from mas_flower.synthetic import writer as writer_mod
from mas_flower.synthetic.names import building_names
from mas_flower.tasks import RGB_DOMAIN, parse_tasks


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# Generation on every core ---------------------------------------------------------------------------

def test_default_workers_by_hand() -> None:
    cores = writer_mod.available_cores()
    assert cores == len(os.sched_getaffinity(0))
    # Views at 32 px: 6 x 96 = 576 >= 500 -> every core (at most one per building); 4 x 100 = 400 -> one.
    assert writer_mod.default_workers(6, 96, 32) == min(cores, 6)
    assert writer_mod.default_workers(4, 100, 32) == 1
    # A 64 px view counts four: 2 x 63 x 4 = 504 -> parallel, 2 x 62 x 4 = 496 -> not.
    assert writer_mod.default_workers(2, 63, 64) == min(cores, 2)
    assert writer_mod.default_workers(2, 62, 64) == 1
    assert writer_mod.default_workers(1, 10_000, 128) == 1  # one building: nothing to share out
    assert writer_mod.default_workers(1000, 8, 32) == min(cores, 1000)


def test_default_workers_follow_the_cpu_affinity() -> None:
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from mas_flower.synthetic.writer import default_workers; print(default_workers(1000, 8, 32))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize("workers", [0, -2, True, 1.5, "2"])
def test_bad_workers_are_refused(tmp_path: Path, workers: object) -> None:
    with pytest.raises(ValueError, match=r"workers must be an integer >= 1 .*got"):
        generate_dataset(tmp_path / "x", buildings=2, views=1, size=16, seed=0, workers=workers)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


def test_same_bytes_with_one_worker_forked_workers_and_forkserver_workers(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = {"buildings": 3, "views": 2, "size": 16, "seed": 4}
    generate_dataset(tmp_path / "one", workers=1, **kwargs)
    assert threading.active_count() == 1 and writer_mod._pool_context().get_start_method() == "fork"
    generate_dataset(tmp_path / "fork", workers=2, **kwargs)
    # The default picks every core once the work is large enough (threshold lowered for a small set).
    monkeypatch.setattr(writer_mod, "PARALLEL_FROM_VIEWS", 1.5)  # 3 x 2 views of 16 px = 1.5 at 32 px
    assert writer_mod.default_workers(3, 2, 16) == min(writer_mod.available_cores(), 3)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)  # as in a ServerApp: another thread runs, so no fork
    other.start()
    try:
        assert writer_mod._pool_context().get_start_method() == "forkserver"
        generate_dataset(tmp_path / "server", workers=None, **kwargs)
    finally:
        stop.set()
        other.join()
    one = _tree(tmp_path / "one")
    assert len(one) == 3 * 2 * 10 + 1  # 9 domains and point_info per view, and synthetic.json
    assert _tree(tmp_path / "fork") == one and _tree(tmp_path / "server") == one


# The start-up line -----------------------------------------------------------------------------------

def test_federation_line_by_hand() -> None:
    assert federation_line(["c", "a", "b"], 1) == "federation: 3 nodes: a, b, c (1 on other machines)"
    assert federation_line(["c", "a", "b"], 0, named=2) == \
        "federation: 3 nodes: a, b, ... and 1 more (0 on other machines)"


def test_federation_line_of_a_thousand_buildings_is_bounded() -> None:
    names = building_names(1000)
    line = federation_line(reversed(names), 0)
    first = sorted(names)[:NAMED_BUILDINGS]
    assert line == (f"federation: 1000 nodes: {', '.join(first)}, ... and {1000 - NAMED_BUILDINGS} more "
                    "(0 on other machines)")
    assert len(line) < 250 and sorted(names)[NAMED_BUILDINGS] not in line.split(": ", 2)[2].split(", ")


# The ClientApp's building list -----------------------------------------------------------------------

def _context(pid: int) -> Context:
    return Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid}, state=RecordDict(), run_config={})


def _add_building(rgb_parent: Path, source: Path, name: str) -> None:
    """A building folder holding one view file copied from `source` (an existing building's rgb folder)."""
    (rgb_parent / name).mkdir()
    view = next(source.iterdir())
    shutil.copy(view, rgb_parent / name / view.name)


def test_buildings_listed_once_and_again_after_a_change(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    generate_dataset(root, buildings=2, views=1, size=16, seed=0)
    names = building_names(2)
    config = DataInstruction(data_root=str(root), all_tasks="sd", image_size=16, model="tiny")
    assert [node_mod.node_building(config, _context(p)) for p in (1, 0)] == [sorted(names)[1], sorted(names)[0]]
    first = layout_mod.scan_root_cached(root)
    assert layout_mod.scan_root_cached(root) is first  # the cached layout: no listing
    rgb = root / RGB_DOMAIN
    _add_building(rgb, rgb / names[0], "aaa-new")  # sorts first: partition ids shift
    assert node_mod.root_buildings(root) == ("aaa-new", *sorted(names))
    assert node_mod.node_building(config, _context(0)) == "aaa-new"
    (rgb / "aaa-new").rename(rgb / "zzz-new")
    assert node_mod.node_building(config, _context(2)) == "zzz-new"
    with pytest.raises(ValueError, match="partition-id=3 but .* has 3 buildings"):
        node_mod.node_building(config, _context(3))


def test_omnidata_components_are_watched_too(tmp_path: Path) -> None:
    source = tmp_path / "synthetic"
    generate_dataset(source, buildings=1, views=1, size=16, seed=0)
    root = tmp_path / "omni"
    component = root / RGB_DOMAIN / "taskonomy"
    component.mkdir(parents=True)
    _add_building(component, source / RGB_DOMAIN / building_names(1)[0], "beta")
    assert node_mod.root_buildings(root) == ("beta",)
    _add_building(component, source / RGB_DOMAIN / building_names(1)[0], "alpha")  # rgb/ itself is unchanged
    assert node_mod.root_buildings(root) == ("alpha", "beta")


def test_a_root_without_rgb_is_refused_and_not_cached(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no rgb/ folder"):
        node_mod.root_buildings(tmp_path)
    assert str(tmp_path) not in layout_mod._SCANNED


def test_opening_every_building_scans_the_root_once(tmp_path: Path, monkeypatch) -> None:
    """Discovery opens one building per node; each open must not look into every building folder again
    (N x N listings). Counted on the real scan: 6 buildings indexed, the root's folders looked into once."""
    root = tmp_path / "synthetic"
    generate_dataset(root, buildings=6, views=1, size=16, seed=0)
    looked = []
    real = layout_mod._holds_view_files
    monkeypatch.setattr(layout_mod, "_holds_view_files", lambda folder: looked.append(folder) or real(folder))
    indexes = [index_building(root, b, parse_tasks("sd")) for b in building_names(6)]
    assert sorted(i.building for i in indexes) == sorted(building_names(6))
    assert len(looked) == 6  # one scan of 6 building folders, not 6 x 6
    _add_building(root / RGB_DOMAIN, root / RGB_DOMAIN / building_names(6)[0], "zz-late")
    with pytest.raises(DataError, match="zz-late"):  # found at once (a rescan), and refused for its missing depth
        index_building(root, "zz-late", parse_tasks("sd"))
    assert len(looked) == 13


# End to end: twelve nodes in Flower's simulation ----------------------------------------------------

def test_twelve_nodes_in_flowers_simulation(private_homes, tmp_path: Path) -> None:
    """Each simulated node finds its own building, and the start-up line names 8 and counts the rest."""
    from tests.test_app_simulation import run_app

    root = tmp_path / "twelve"
    generate_dataset(root, buildings=12, views=8, size=32, seed=0)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addHandler(handler)
    try:
        run_app({"method": "fedavg", "task-set": "s", "num-rounds": 1, "clients-per-round": 2, "local-epochs": 1,
                 "batch-size": 8, "image-size": 32, "data-root": str(root), "output-dir": str(tmp_path / "out"),
                 "run-name": "twelve"}, num_supernodes=12)
    finally:
        flwr_logger.removeHandler(handler)
    results = json.loads((tmp_path / "out" / "twelve" / "results.json").read_text())
    assert results["nodes"] == sorted(building_names(12))  # twelve nodes, twelve distinct buildings
    found = [line for line in lines if line.startswith("federation: ")]
    assert found == [federation_line(building_names(12), 0)]
    assert found[0].endswith(", ... and 4 more (0 on other machines)")
