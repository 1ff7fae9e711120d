"""Hand-made Taskonomy-layout PNGs for the data tests, written with PIL in the exact on-disk encodings.

Deliberately independent of mas_flower.synthetic: these are tiny images with known raw values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mas_flower.tasks import MASK_DOMAIN, TASKS

#: Domain -> (bits, channels) as stored, taken from the task table (mask_valid: 8-bit grey).
STORAGE = {t.domain: (t.bits, t.png_channels) for t in TASKS.values()}
STORAGE[MASK_DOMAIN] = (8, 1)
ALL = tuple(STORAGE)


def write_png(path: Path, raw: np.ndarray, bits: int) -> Path:
    """raw (H, W) grey or (H, W, 3) RGB; 16-bit grey is saved as PIL "I;16"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits == 16:
        assert raw.ndim == 2
        Image.fromarray(raw.astype(np.uint16)).save(path)  # mode I;16
    else:
        Image.fromarray(raw.astype(np.uint8)).save(path)
    return path


def view_path(root: Path, domain: str, building: str, point: int, view: int, folder: str | None = None,
              component: str | None = None) -> Path:
    """Taskonomy's ROOT/<folder>/<building>/..., or Omnidata's ROOT/<folder>/<component>/<building>/..."""
    folder = folder or domain
    base = root / folder / component if component else root / folder
    return base / building / f"point_{point}_view_{view}_domain_{folder}.png"


def random_raw(domain: str, size: int, rng: np.random.Generator) -> np.ndarray:
    bits, channels = STORAGE[domain]
    shape = (size, size) if channels == 1 else (size, size, channels)
    if domain == "depth_zbuffer":
        raw = rng.integers(500, 9000, shape)
        raw[rng.random(shape) < 0.1] = 65535
        return raw
    if domain == "segment_semantic":
        return rng.integers(0, 18, shape)
    if domain == MASK_DOMAIN:
        return (rng.random(shape) < 0.8) * 255
    return rng.integers(0, 2**bits, shape)


def make_dataset(root: Path, views: dict[str, list[tuple[int, int]]], domains: tuple[str, ...] = ALL,
                 size: int = 8, seed: int = 0, folders: dict[str, str] | None = None,
                 component: str | None = None) -> Path:
    """Random-content views: {building: [(point, view), ...]} for each domain (`folders` renames one).

    With `component`, the tree is in Omnidata's layout ROOT/<domain>/<component>/<building>/; the same
    seed gives the same file contents in either layout.
    """
    rng = np.random.default_rng(seed)
    for building, keys in views.items():
        for p, v in keys:
            for domain in domains:
                folder = (folders or {}).get(domain)
                write_png(view_path(root, domain, building, p, v, folder, component), random_raw(domain, size, rng),
                          STORAGE[domain][0])
    return root


def depth_ramp(size: int = 16, seed: int = 0) -> np.ndarray:
    """A smooth 16-bit depth image (a tilted plane plus a little noise), compressed like real depth:
    with deflate's Huffman codes rather than stored blocks, so a flipped bit can decode silently."""
    y, x = np.mgrid[0:size, 0:size]
    return 1500 + 40 * x + 25 * y + np.random.default_rng(seed).integers(0, 4, (size, size))


def grid(points: int, views_per_point: int) -> list[tuple[int, int]]:
    return [(p, v) for p in range(points) for v in range(views_per_point)]
