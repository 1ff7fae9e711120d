"""The public loader: one building's views, split by point, served as decoded training batches.

Samples are decoded from PNG once (see prepare.py and cache.py); a batch only gathers rows of the
cached raw arrays and applies the affine decode of tasks.py, on the host or on the training device
(batching.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from mas_flower.data.batching import RawBatch, decode_batch, device_batches
from mas_flower.data.cache import ArrayStore
from mas_flower.data.index_cache import load_index, save_index
from mas_flower.data.prepare import array_names, index_building, load_arrays
from mas_flower.data.split import DEFAULT_FRACTIONS, SPLIT_NAMES, check_fractions, split_points
from mas_flower.tasks import Task, needs_mask, parse_tasks


def open_building(root: Path, building: str, tasks: str, image_size: int, *,
                  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
                  cache_dir: Path | None = None, index_token: str | None = None,
                  reuse_index: bool = False) -> BuildingData:
    """Index, validate and (once per cache) decode one building for the given task letters.

    `cache_dir` None keeps decoded samples in this process's memory only; with a folder, they are
    also memory-mapped from disk, shared by later runs and by concurrent processes. With a folder and
    an `index_token` (the ClientApp passes the Flower run id), the checked index is saved there, and
    an open with `reuse_index` and the same token takes it back instead of listing and statting every
    file again (`mas_flower.data.index_cache` says when it is trusted). Raises DataError naming the
    file, folder or building (e.g. too few camera points for a non-empty val/test split).
    """
    task_list = parse_tasks(tasks)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    fractions = check_fractions(fractions)
    letters = "".join(t.letter for t in task_list)
    cache_dir = None if cache_dir is None else Path(cache_dir)
    store = ArrayStore(Path(root), building, image_size, cache_dir)
    if reuse_index and index_token is not None and store.directory is not None:
        saved = load_index(store.directory, index_token, letters)
        if saved is not None:
            keys, names = saved
            arrays = {entry: store.get(name) for entry, name in names.items()}
            if all(a is not None and len(a) == len(keys) for a in arrays.values()):
                return BuildingData(building, task_list, image_size, keys, arrays, fractions)  # type: ignore[arg-type]
    index = index_building(Path(root), building, task_list)
    split_points(building, [p for p, _ in index.keys], fractions)  # an empty split fails before any decoding
    names = array_names(index, image_size)
    arrays = load_arrays(index, image_size, cache_dir, names)
    if index_token is not None and store.directory is not None:
        folders = [index.root, *sorted({files[0].parent for files in index.files.values()})]
        save_index(store.directory, index_token, letters, index.keys, names, folders)
    return BuildingData(building, task_list, image_size, index.keys, arrays, fractions)


class BuildingData:
    """One building's samples at one image size, with its deterministic point-grouped splits."""

    def __init__(self, building: str, tasks: list[Task], image_size: int, keys: list[tuple[int, int]],
                 arrays: dict[str, np.ndarray], fractions: tuple[float, float, float]) -> None:
        self.building = building
        self.tasks = "".join(t.letter for t in tasks)
        self.image_size = image_size
        self.keys = keys
        self._task_list = tasks
        self._arrays = arrays
        points = split_points(building, [p for p, _ in keys], fractions)
        self._splits = {
            name: SplitData(self, np.array([i for i, (p, _) in enumerate(keys) if p in points[name]], dtype=np.int64))
            for name in SPLIT_NAMES
        }

    def split(self, name: str) -> SplitData:
        if name not in self._splits:
            raise ValueError(f"unknown split {name!r}; use one of {', '.join(SPLIT_NAMES)}")
        return self._splits[name]

    def sizes(self) -> dict[str, int]:
        return {name: len(s) for name, s in self._splits.items()}

    def __repr__(self) -> str:
        return f"BuildingData({self.building!r}, tasks={self.tasks!r}, size={self.image_size}, {self.sizes()})"


class SplitData:
    """The samples of one split; `batches` yields dicts of tensors (see `_batch`)."""

    def __init__(self, data: BuildingData, rows: np.ndarray) -> None:
        self._data = data
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def keys(self) -> list[tuple[int, int]]:
        """(point, view) of each sample, in order."""
        return [self._data.keys[i] for i in self.rows]

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False
                ) -> Iterator[dict[str, torch.Tensor]]:
        """Decoded batches on the host (see `decode_batch` for their tensors); arguments as `raw_batches`."""
        tasks, with_mask = self._data._task_list, needs_mask(self._data.tasks)
        for raw in self.raw_batches(batch_size, shuffle=shuffle, augment=augment, generator=generator,
                                    drop_last=drop_last):
            yield decode_batch(raw, tasks, with_mask)

    def device_batches(self, device: torch.device | str, batch_size: int, *, shuffle: bool = False,
                       augment: bool = False, generator: torch.Generator | None = None, drop_last: bool = False
                       ) -> Iterator[dict[str, torch.Tensor]]:
        """The same batches as `batches`, decoded on `device` (copied raw, one batch ahead on CUDA)."""
        raws = self.raw_batches(batch_size, shuffle=shuffle, augment=augment, generator=generator,
                                drop_last=drop_last)
        return device_batches(raws, device, self._data._task_list, needs_mask(self._data.tasks))

    def raw_batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                    generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[RawBatch]:
        """Stored rows in order (or shuffled by `generator`); `augment` marks each sample for a
        left-right flip with p=1/2, drawn from `generator` after the shuffle, one draw per batch."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(self.rows)
        order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
        arrays = self._data._arrays
        for start in range(0, n, batch_size):
            chosen = self.rows[order[start : start + batch_size]]
            if drop_last and len(chosen) < batch_size:
                return
            raw = {name: torch.from_numpy(np.ascontiguousarray(a[chosen])) for name, a in arrays.items()}
            flip = torch.rand(len(chosen), generator=generator) < 0.5 if augment else None
            yield RawBatch(raw, flip)
