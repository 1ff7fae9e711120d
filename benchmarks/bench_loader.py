"""Loader throughput: samples/second for a first (decoding) epoch and for cached epochs.

Writes its own temporary dataset of 512x512 PNGs in every domain's encoding (smooth random content,
so the PNGs compress about like real renders), then for each image size times:
  first   open_building with an empty disk cache + one shuffled, augmented epoch (decodes every PNG)
  disk    a fresh process's view: memory cache cleared, open from the disk cache + one epoch
  memory  another epoch over the already opened building
with torch's default intra-op threads and with 1 (the batch decode is small tensor work; on a
loaded machine OpenMP threads spinning against each other can dominate it).
Prints the median of --repeats runs.

    .venv/bin/python benchmarks/bench_loader.py [--views 64] [--sizes 64 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mas_flower.data import clear_memory_cache, open_building
from mas_flower.tasks import ALL_DOMAINS, MASK_DOMAIN, TASKS

STORAGE = {t.domain: (t.bits, t.png_channels) for t in TASKS.values()}
STORAGE[MASK_DOMAIN] = (8, 1)


def _smooth(rng: np.random.Generator, size: int, channels: int, top: int) -> np.ndarray:
    coarse = rng.random((size // 32, size // 32, channels))
    up = np.kron(coarse, np.ones((32, 32, 1)))
    return np.clip(up * top + rng.normal(0, top * 0.01, up.shape), 0, top)


def make_dataset(root: Path, views: int, size: int = 512, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(views):
        p, v = divmod(i, 4)
        for domain in ALL_DOMAINS:
            bits, channels = STORAGE[domain]
            if domain == "depth_zbuffer":
                raw = _smooth(rng, size, 1, 12000)
                raw[raw > 10000] = 65535
            elif domain == "segment_semantic":
                raw = np.floor(_smooth(rng, size, 1, 17.99))
            elif domain == MASK_DOMAIN:
                raw = (_smooth(rng, size, 1, 1) < 0.85) * 255
            else:
                raw = _smooth(rng, size, channels, 2**bits - 1)
            raw = raw[..., 0] if channels == 1 else raw
            path = root / domain / "bench" / f"point_{p}_view_{v}_domain_{domain}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(raw.astype(np.uint16 if bits == 16 else np.uint8)).save(path)


def epoch(data, seed: int) -> int:
    g = torch.Generator().manual_seed(seed)
    n = 0
    for name in ("train", "val", "test"):
        for batch in data.split(name).batches(16, shuffle=True, augment=True, generator=g):
            n += len(batch["rgb"])
    return n


def measure(work: Path, tasks: str, size: int, repeats: int) -> dict[str, float]:
    rates: dict[str, list[float]] = {"first": [], "disk": [], "memory": []}
    for r in range(repeats):
        cache = work / f"cache{size}_{r}"
        shutil.rmtree(cache, ignore_errors=True)
        clear_memory_cache()
        t = time.perf_counter()
        data = open_building(work / "ds", "bench", tasks, size, cache_dir=cache)
        n = epoch(data, r)
        rates["first"].append(n / (time.perf_counter() - t))
        clear_memory_cache()
        t = time.perf_counter()
        data = open_building(work / "ds", "bench", tasks, size, cache_dir=cache)
        n = epoch(data, r)
        rates["disk"].append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        n = epoch(data, r + 1)
        rates["memory"].append(n / (time.perf_counter() - t))
        shutil.rmtree(cache, ignore_errors=True)
    return {k: statistics.median(v) for k, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", default="sdnkterca")
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 1],
                        help="torch intra-op threads for the batch decode (0: leave torch's default)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        t0 = time.perf_counter()
        make_dataset(work / "ds", args.views)
        files = sum(1 for _ in (work / "ds").rglob("*.png"))
        print(f"dataset: {args.views} views x {len(ALL_DOMAINS)} domains = {files} PNGs of 512x512 "
              f"({sum(p.stat().st_size for p in (work / 'ds').rglob('*.png')) / 2**20:.0f} MiB), "
              f"written in {time.perf_counter() - t0:.1f}s; tasks {args.tasks}; batch 16, shuffle+flip")
        default_threads = torch.get_num_threads()
        print(f"{'threads':>7}  {'size':>5}  {'first epoch':>12}  {'disk-cached':>12}  {'memory':>12}   "
              f"(samples/s, median of {args.repeats})")
        for threads in args.threads:
            torch.set_num_threads(threads or default_threads)
            for size in args.sizes:
                med = measure(work, args.tasks, size, args.repeats)
                print(f"{torch.get_num_threads():>7}  {size:>5}  {med['first']:>12.1f}  {med['disk']:>12.1f}  "
                      f"{med['memory']:>12.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
