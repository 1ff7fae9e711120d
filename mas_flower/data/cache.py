"""Decoded-and-resized samples, cached in memory and (optionally) on disk as memory-mapped .npy.

Decoding 512x512 PNGs costs milliseconds per file, far more than a small model's step, so each
(building, domain, image size, source fingerprint) is decoded once and stored as raw resized values
in the domain's native dtype (uint8/uint16): compact, and exact enough because the affine decode of
tasks.py commutes with resizing and is applied per batch. Disk entries are written to a temporary
file and renamed, so a killed run never leaves a half entry that looks complete; a per-building file
lock (`filelock`) makes concurrent processes (Ray workers) build an entry once and wait for each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from filelock import FileLock

#: Bump when the stored content changes meaning (resizing rule, layout), to orphan old entries.
FORMAT_VERSION = 1
#: Bytes of in-RAM (not memory-mapped) arrays the process keeps before evicting the oldest.
MEMORY_LIMIT_BYTES = 4 << 30

#: Memory-mapped arrays the process keeps before forgetting the oldest: each holds a file descriptor, and a
#: ClientApp actor serving every building of a large federation (the final test) would otherwise run out
#: of them (15,000 per actor at 5,000 buildings of 4 arrays; docs/benchmarks.md). Forgetting costs a
#: re-open from disk, not a re-decode.
MAPPED_LIMIT = 1024

_memory: OrderedDict[tuple, np.ndarray] = OrderedDict()
_memory_lock = threading.Lock()
_build_locks: dict[tuple, threading.Lock] = {}


def fingerprint(root: Path, paths: Iterable[Path], extra: str = "") -> str:
    """Hash of the source files' names (relative to root), sizes and mtimes: changes when any source does."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}\n{extra}\n".encode())
    for path in paths:
        st = path.stat()
        h.update(f"{path.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def clear_memory_cache() -> None:
    """Forget every array held by this process (disk entries stay)."""
    with _memory_lock:
        _memory.clear()


def _remember(key: tuple, array: np.ndarray) -> None:
    """Keep `array` as the newest entry; forget the oldest in-RAM arrays beyond `MEMORY_LIMIT_BYTES` and
    the oldest memory-mapped ones beyond `MAPPED_LIMIT` (never the entry just added)."""
    with _memory_lock:
        _memory[key] = array
        _memory.move_to_end(key)
        _forget_oldest(mapped=False, limit=MEMORY_LIMIT_BYTES)
        _forget_oldest(mapped=True, limit=MAPPED_LIMIT)


def _forget_oldest(*, mapped: bool, limit: int) -> None:
    """Drop the oldest entries of one kind until their total (bytes in RAM, or a count of memory maps) is
    within `limit`. Called with `_memory_lock` held."""
    kind = [k for k, a in _memory.items() if isinstance(a, np.memmap) == mapped]
    size = (lambda a: 1) if mapped else (lambda a: a.nbytes)
    total = sum(size(_memory[k]) for k in kind)
    for k in kind[:-1]:
        if total <= limit:
            break
        total -= size(_memory.pop(k))


class ArrayStore:
    """Cached arrays of one building at one image size, named e.g. `normal-masked-depth_zbuffer-<fp>`."""

    def __init__(self, root: Path, building: str, image_size: int, cache_dir: Path | None) -> None:
        root_id = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:8]
        # The cache folder is part of the in-memory key so that an in-RAM-only open never stops a later
        # open with a cache folder from writing its disk entries.
        self._key = (root_id, building, image_size, None if cache_dir is None else str(Path(cache_dir).resolve()))
        folder = f"{building.replace('/', '+')}-{root_id}"  # an Omnidata name is component/building
        self.directory = None if cache_dir is None else Path(cache_dir) / folder / f"s{image_size}"

    def get(self, name: str) -> np.ndarray | None:
        """The stored array (memory first, then a memory-mapped disk entry), or None."""
        key = (*self._key, name)
        with _memory_lock:
            if key in _memory:
                _memory.move_to_end(key)
                return _memory[key]
        if self.directory is None:
            return None
        path = self.directory / f"{name}.npy"
        try:
            array = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            return None
        _remember(key, array)
        return array

    @contextlib.contextmanager
    def building_lock(self) -> Iterator[None]:
        """Exclusive right to build this store's entries, across threads and (with a disk) processes."""
        with _memory_lock:
            tlock = _build_locks.setdefault(self._key, threading.Lock())
        with tlock:
            if self.directory is None:
                yield
                return
            self.directory.mkdir(parents=True, exist_ok=True)
            with FileLock(self.directory / ".lock"):
                self._remove_stale_temporaries()
                yield

    def _remove_stale_temporaries(self) -> None:
        # Only the lock holder writes, so any temporary seen now was left by a killed writer.
        for tmp in self.directory.glob(".*.npy.tmp-*"):  # type: ignore[union-attr]
            with contextlib.suppress(OSError):
                tmp.unlink()

    @contextlib.contextmanager
    def writer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> Iterator[np.ndarray]:
        """An array to fill; on normal exit it is published atomically under `name`, on error discarded."""
        key = (*self._key, name)
        if self.directory is None:
            array = np.empty(shape, dtype)
            yield array
            _remember(key, array)
            return
        final = self.directory / f"{name}.npy"
        tmp = self.directory / f".{name}.npy.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            yield out
            out.flush()
            del out
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._drop_superseded(name)
        _remember(key, np.load(final, mmap_mode="r"))

    def _drop_superseded(self, name: str) -> None:
        """Delete older entries of the same array (same name up to the fingerprint): sources changed."""
        stem = name.rsplit("-", 1)[0]
        for old in self.directory.glob(f"{stem}-*.npy"):  # type: ignore[union-attr]
            if old.name != f"{name}.npy" and old.name.rsplit("-", 1)[0] == stem:
                with contextlib.suppress(OSError):
                    old.unlink()
