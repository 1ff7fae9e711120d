"""Which building this node is, and its data (loaded once per process, shared by its nodes).

Simulation gives each node a `partition-id`; a deployed SuperNode may instead name its
`building` and its own `data-root` in `--node-config`, which win over the run's settings.
A partition id is the index of the building in the root's sorted building list. That list is read
once per process and root (`root_buildings`), not once per message: with N buildings it costs a
listing of N folders (45 ms at N = 1,000), and an evaluation of every node sends N messages.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from flwr.app import Context

from mas_flower.data import BuildingData, open_building
from mas_flower.data.layout import scan_root_cached
from mas_flower.settings import home
from mas_flower.strategy.protocol import DataInstruction


def data_root(data: DataInstruction, context: Context) -> Path:
    """The node-config's `data-root` if the SuperNode names one, else the run's."""
    return Path(str(context.node_config.get("data-root") or data.data_root))


def root_buildings(root: Path) -> tuple[str, ...]:
    """`list_buildings(root)` (sorted names), listed again only when a folder holding building folders
    changed (`mas_flower.data.layout.scan_root_cached`); DataError for a root that is not a dataset."""
    return tuple(scan_root_cached(Path(root)).buildings)


def node_building(data: DataInstruction, context: Context) -> str:
    """The building of this node: its node-config's `building`, else the `partition-id`-th building of
    the data root (sorted names). ValueError if it has neither or the id is out of range."""
    node = context.node_config
    if "building" in node:
        return str(node["building"])
    if "partition-id" not in node:
        raise ValueError("node-config has neither 'building' nor 'partition-id': cannot tell this node's data")
    buildings = root_buildings(data_root(data, context))
    pid = int(node["partition-id"])
    if not 0 <= pid < len(buildings):
        raise ValueError(f"partition-id={pid} but {data_root(data, context)} has {len(buildings)} buildings")
    return buildings[pid]


def building_data(data: DataInstruction, context: Context, *, verify: bool = False) -> BuildingData:
    """This node's building. `verify` lists and stats every file (node discovery, once per run, does);
    otherwise the index verified in this run is taken back from disk (mas_flower.data.index_cache):
    a deployed node runs every message in a fresh process, and re-listing a big building cost each."""
    return _open(str(data_root(data, context)), node_building(data, context), data.all_tasks, data.image_size,
                 f"run-{context.run_id}", verify)


@lru_cache(maxsize=16)
def _open(root: str, building: str, tasks: str, image_size: int, token: str, verify: bool) -> BuildingData:
    # Read-only data keyed by building, not per-node state: safe to share across nodes of one process.
    return open_building(Path(root), building, tasks, image_size, cache_dir=home() / "cache",
                         index_token=token, reuse_index=not verify)
