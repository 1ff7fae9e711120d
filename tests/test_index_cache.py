"""The building index saved on disk per token (run): reused only by the same token over unchanged folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

import mas_flower.data.dataset as dataset
from client_app import node
from mas_flower.data import DataError, clear_memory_cache, list_buildings, open_building
from mas_flower.strategy.protocol import DataInstruction

TASKS = "sdn"


@pytest.fixture
def federation(tiny_federation: Path, tmp_path: Path) -> Path:
    """A private copy: these tests delete files."""
    root = tmp_path / "data"
    shutil.copytree(tiny_federation, root)
    clear_memory_cache()
    yield root
    clear_memory_cache()


def _open(root: Path, cache: Path, token: str | None, reuse: bool):
    clear_memory_cache()  # as a fresh process: nothing in this process's memory
    return open_building(root, list_buildings(root)[0], TASKS, 16, cache_dir=cache, index_token=token,
                         reuse_index=reuse)


def _batch(data) -> dict[str, np.ndarray]:
    raw = next(data.split("train").raw_batches(64))
    return {k: v.numpy() for k, v in raw.arrays.items()}


def test_reused_index_gives_the_same_data_without_listing_any_folder(federation: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    checked = _open(federation, cache, "run-1", reuse=False)

    def no_listing(*args, **kwargs):
        raise AssertionError("the saved index was not reused: the building was listed again")

    monkeypatch.setattr(dataset, "index_building", no_listing)
    reused = _open(federation, cache, "run-1", reuse=True)
    assert reused.keys == checked.keys and reused.sizes() == checked.sizes()
    for split in ("train", "val", "test"):
        assert reused.split(split).keys == checked.split(split).keys
    a, b = _batch(checked), _batch(reused)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(AssertionError, match="listed again"):  # another run's token is never trusted
        _open(federation, cache, "run-2", reuse=True)


def _a_depth_file(root: Path) -> Path:
    folder = root / "depth_zbuffer" / list_buildings(root)[0]
    return sorted(folder.iterdir())[0]


def test_a_removed_label_is_found_although_an_index_was_saved(federation: Path, tmp_path: Path) -> None:
    """Removing a file changes its folder's mtime: the saved index is stale and the full check names it."""
    cache = tmp_path / "cache"
    _open(federation, cache, "run-1", reuse=False)
    gone = _a_depth_file(federation)
    gone.unlink()
    with pytest.raises(DataError, match="label missing") as err:
        _open(federation, cache, "run-1", reuse=True)
    assert gone.name in str(err.value)


def test_a_new_run_checks_every_file_again(federation: Path, tmp_path: Path) -> None:
    """Within one token the index is trusted when its folders' mtimes are unchanged (a file changed in
    place goes unseen, as in a process that opened the building once); a new token never trusts it."""
    cache = tmp_path / "cache"
    _open(federation, cache, "run-1", reuse=False)
    gone = _a_depth_file(federation)
    folder_times = os.stat(gone.parent)
    gone.unlink()
    os.utime(gone.parent, ns=(folder_times.st_atime_ns, folder_times.st_mtime_ns))  # hide the change
    assert _open(federation, cache, "run-1", reuse=True).sizes()  # the documented blind spot
    with pytest.raises(DataError, match="label missing"):
        _open(federation, cache, "run-2", reuse=True)


def test_without_a_token_or_a_cache_folder_no_index_is_written(federation: Path, tmp_path: Path) -> None:
    _open(federation, tmp_path / "cache", None, reuse=True)
    assert not list((tmp_path / "cache").rglob("index-*.json"))
    clear_memory_cache()
    open_building(federation, list_buildings(federation)[0], TASKS, 16, index_token="run-1", reuse_index=True)
    assert not list((tmp_path / "cache").rglob("index-*.json"))


def test_the_clientapp_verifies_at_discovery_and_reuses_in_the_run(federation: Path, private_homes,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = DataInstruction(data_root=str(federation), all_tasks=TASKS, image_size=16, model="tiny")

    def context(run_id: int) -> Context:
        return Context(run_id=run_id, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                       run_config={})

    node._open.cache_clear()
    clear_memory_cache()
    node.building_data(config, context(7), verify=True)  # what the discovery query does
    saved = list((private_homes["MAS_FLOWER_HOME"] / "cache").rglob(f"index-{TASKS}.json"))
    assert len(saved) == 1 and '"token": "run-7"' in saved[0].read_text()

    calls = []
    real = dataset.index_building
    monkeypatch.setattr(dataset, "index_building", lambda *a, **k: calls.append(a) or real(*a, **k))
    node._open.cache_clear()
    clear_memory_cache()
    node.building_data(config, context(7))  # a train or evaluate message of the same run, new process
    assert calls == []
    node._open.cache_clear()
    clear_memory_cache()
    node.building_data(config, context(8))  # another run, even without discovery: a full check
    assert len(calls) == 1
    node._open.cache_clear()


def test_the_memory_cache_keeps_a_bounded_number_of_memory_maps(tmp_path: Path, monkeypatch) -> None:
    """Each memory map holds a file descriptor: beyond MAPPED_LIMIT the oldest are forgotten (in RAM arrays
    are bounded by bytes, separately), so serving thousands of buildings cannot exhaust a process's."""
    from mas_flower.data import cache

    monkeypatch.setattr(cache, "MAPPED_LIMIT", 3)
    monkeypatch.setattr(cache, "MEMORY_LIMIT_BYTES", 100)
    clear_memory_cache()
    for i in range(5):
        np.save(tmp_path / f"{i}.npy", np.full(4, i, np.uint8))
        cache._remember(("mapped", i), np.load(tmp_path / f"{i}.npy", mmap_mode="r"))
        cache._remember(("ram", i), np.zeros(40, np.uint8))  # 40 bytes: two fit in 100
    kept = list(cache._memory)
    assert [k for k in kept if k[0] == "mapped"] == [("mapped", 2), ("mapped", 3), ("mapped", 4)]
    assert [k for k in kept if k[0] == "ram"] == [("ram", 3), ("ram", 4)]
    assert int(cache._memory[("mapped", 4)][0]) == 4  # the newest map still reads its file
    clear_memory_cache()
