"""Turning one building's PNGs into cached arrays: index and validate, then decode and resize once.

Stored per sample are raw values resized to the model's size, in the domain's own dtype. Resizing
raw values then decoding equals decoding then resizing because every decode in tasks.py is affine.
Labels of masked tasks are resized with *normalised* weights (resize(x * valid) / resize(valid)), so
invalid pixels (e.g. depth 65535) never bleed into the valid pixels next to them; the mask itself and
class ids use nearest, everything else antialiased bilinear (docs/design.md, section "Taskonomy's encodings").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from mas_flower.data.cache import ArrayStore, fingerprint
from mas_flower.data.layout import DOMAIN_SPECS, DataError, ViewKey, list_views, scan_root_cached
from mas_flower.data.reading import check_header, read_png, valid_pixels
from mas_flower.tasks import MASK_DOMAIN, MASK_SOURCE_DOMAIN, RGB_DOMAIN, Task, needs_mask

#: Array name of the valid-pixel mask.
MASK = "mask"
#: Threads decoding PNGs while the main thread resizes (decoding releases the GIL).
DECODE_THREADS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Entry:
    """One cached array: `name` in batches-to-be, read from `domain`, masked by `mask_by`."""

    name: str
    domain: str
    mask_by: str | None
    nearest: bool

    @property
    def dtype(self) -> np.dtype:
        if self.name == MASK:
            return np.dtype(bool)
        return np.dtype(np.uint16 if max(DOMAIN_SPECS[self.domain].bits) > 8 else np.uint8)

    @property
    def channels(self) -> int:
        return 1 if self.name == MASK else DOMAIN_SPECS[self.domain].channels

    def stored_name(self, fp: str) -> str:
        variant = f"from_{self.mask_by}" if self.name == MASK else (
            f"masked_by_{self.mask_by}" if self.mask_by else "plain")
        return f"{self.name}-{variant}-{fp}"


@dataclass
class BuildingIndex:
    """The views of one building and, per domain needed, their files aligned with `keys`."""

    root: Path
    building: str
    keys: list[ViewKey]
    files: dict[str, list[Path]]
    entries: list[Entry]


def index_building(root: Path, building: str, tasks: list[Task]) -> BuildingIndex:
    """List the views and the label files the tasks need; every missing folder or file is an error."""
    layout = scan_root_cached(Path(root))  # one scan per process and root, not one per building opened
    rgb_dir = layout.rgb_dir(building)  # DataError naming the known buildings if unknown
    rgb_files = list_views(rgb_dir, RGB_DOMAIN).files
    keys = list(rgb_files)
    if not keys:
        raise DataError(f"{rgb_dir} holds no view files named point_<P>_view_<V>_domain_{RGB_DOMAIN}.png")

    letters = "".join(t.letter for t in tasks)
    entries = [Entry(RGB_DOMAIN, RGB_DOMAIN, None, nearest=False)]
    needed: dict[str, str] = {}  # domain -> why
    mask_by = None
    if needs_mask(letters):
        mask_by = layout.mask_domain(building)
        if mask_by is None:
            masked = "".join(t.letter for t in tasks if t.masked)
            rel = layout.relpath(building)
            raise DataError(
                f"masked task(s) {masked!r} need a valid-pixel mask for building {building!r}, but neither "
                f"{layout.root / MASK_DOMAIN / rel} nor {layout.root / MASK_SOURCE_DOMAIN / rel} exists")
        needed[mask_by] = "the valid-pixel mask"
    for t in tasks:
        if t.domain != RGB_DOMAIN:
            needed.setdefault(t.domain, f"task {t.letter!r}")
            entries.append(Entry(t.domain, t.domain, mask_by if t.masked else None, t.resize == "nearest"))
    if mask_by is not None:
        entries.append(Entry(MASK, mask_by, mask_by, nearest=True))

    files = {RGB_DOMAIN: list(rgb_files.values())}
    for domain, why in needed.items():
        folder = layout.domain_dir(domain, building)
        if folder is None:
            rel = layout.relpath(building)
            spellings = " or ".join(str(layout.root / f / rel) for f in DOMAIN_SPECS[domain].folder_names)
            raise DataError(f"{why} needs domain folder {spellings}, which does not exist")
        listing = list_views(folder, domain).files
        missing = [k for k in keys if k not in listing]
        if missing:
            k = missing[0]
            more = f" (and {len(missing) - 1} more views of {building} lack {domain})" if len(missing) > 1 else ""
            raise DataError(f"label missing for {files[RGB_DOMAIN][keys.index(k)]}: expected "
                            f"{layout.expected_path(domain, building, k, folder)}{more}")
        files[domain] = [listing[k] for k in keys]
    return BuildingIndex(layout.root, building, keys, files, entries)


def array_names(index: BuildingIndex, image_size: int) -> dict[str, str]:
    """Each entry's stored name, whose fingerprint covers the name, size and mtime of every source file."""
    names = {}
    for e in index.entries:
        sources = index.files[e.domain] + (index.files[e.mask_by] if e.mask_by and e.mask_by != e.domain else [])
        names[e.name] = e.stored_name(fingerprint(index.root, sources, f"{image_size}"))
    return names


def load_arrays(index: BuildingIndex, image_size: int, cache_dir: Path | None,
                names: dict[str, str]) -> dict[str, np.ndarray]:
    """Every entry's array (N, C, S, S) under its stored name (`array_names`), from the cache or built
    (once, under the store's lock)."""
    store = ArrayStore(index.root, index.building, image_size, cache_dir)
    arrays = {e.name: store.get(names[e.name]) for e in index.entries}
    if any(a is None for a in arrays.values()):
        with store.building_lock():
            arrays = {e.name: store.get(names[e.name]) for e in index.entries}  # another process may have built
            todo = [e for e in index.entries if arrays[e.name] is None]
            if todo:
                with contextlib.ExitStack() as stack:
                    n = len(index.keys)
                    out = {e.name: stack.enter_context(store.writer(
                        names[e.name], (n, e.channels, image_size, image_size), e.dtype)) for e in todo}
                    _fill(index, todo, image_size, out)
                arrays.update({e.name: store.get(names[e.name]) for e in todo})
    return arrays  # type: ignore[return-value]


def _fill(index: BuildingIndex, todo: list[Entry], size: int, out: dict[str, np.ndarray]) -> None:
    domains = sorted({e.domain for e in todo} | {e.mask_by for e in todo if e.mask_by})
    mask_by = next((e.mask_by for e in todo if e.mask_by), None)
    # Validate every file's header before decoding anything: a bad file late in a building should
    # not cost minutes of decoding first.
    for i, rgb_path in enumerate(index.files[RGB_DOMAIN]):
        h = check_header(rgb_path, DOMAIN_SPECS[RGB_DOMAIN])
        for d in domains:
            if d != RGB_DOMAIN:
                check_header(index.files[d][i], DOMAIN_SPECS[d], (h.width, h.height))
    with _single_threaded_torch():
        for i, raws in enumerate(_decoded(index, domains)):
            valid = valid_pixels(mask_by, raws[mask_by][0]) if mask_by else None
            for name, array in resize_view(raws, valid, todo, size).items():
                out[name][i] = array


def _decoded(index: BuildingIndex, domains: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """Each view's decoded images, in order; a few views decode ahead in threads."""

    def read(i: int) -> dict[str, np.ndarray]:
        raws = {d: read_png(index.files[d][i], d) for d in domains}
        shapes = {d: r.shape[-2:] for d, r in raws.items()}
        first = domains[0]
        for d, s in shapes.items():
            if s != shapes[first]:
                raise DataError(f"{index.files[d][i]}: size {s[1]}x{s[0]} differs from "
                                f"{index.files[first][i]} ({shapes[first][1]}x{shapes[first][0]})")
        return raws

    n = len(index.keys)
    window = 2 * DECODE_THREADS
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        pending = [pool.submit(read, i) for i in range(min(window, n))]
        for i in range(n):
            raws = pending[i].result()
            if i + window < n:
                pending.append(pool.submit(read, i + window))
            pending[i] = None  # type: ignore[call-overload]  # free memory as we go
            yield raws


def resize_view(raws: dict[str, np.ndarray], valid: np.ndarray | None, entries: list[Entry],
                size: int) -> dict[str, np.ndarray]:
    """One view's raw images (C, H, W) to each entry's (C, size, size) in its dtype.

    One small interpolate per entry rather than one over all channels concatenated: the big
    temporary of the latter costs more in allocation than the call overhead it saves.
    """
    h, w = next(iter(raws.values())).shape[-2:]
    if (h, w) == (size, size):
        return {e.name: (valid[None] if e.name == MASK else raws[e.domain]) for e in entries}
    v = None if valid is None else torch.from_numpy(valid).float()[None, None]
    den = None
    out: dict[str, np.ndarray] = {}
    for e in entries:
        x = v if e.name == MASK else torch.from_numpy(raws[e.domain]).float()[None]
        if e.nearest:
            y = F.interpolate(x, size=(size, size), mode="nearest-exact")
        elif e.mask_by:
            if den is None:
                den = _smooth(v, size).clamp_min_(1e-6)
            y = _smooth(x.mul_(v), size).div_(den)
        else:
            y = _smooth(x, size)
        out[e.name] = _to_dtype(y[0], e.dtype)
    return out


def _smooth(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@contextlib.contextmanager
def _single_threaded_torch() -> Iterator[None]:
    """Per-view resizes are tiny; intra-op threads only fight the decode threads for the cores (on a
    loaded 2-core box we measured a 50x slowdown from OpenMP spinning). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _to_dtype(x: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    if dtype == np.dtype(bool):
        return (x > 0.5).numpy()
    top = np.iinfo(dtype).max
    return np.clip(np.rint(x.numpy()), 0, top).astype(dtype)
