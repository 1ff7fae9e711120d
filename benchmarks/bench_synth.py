"""Synthetic generator throughput on ONE core and disk use per view, extrapolated to the paper's size.

    .venv/bin/python benchmarks/bench_synth.py [--buildings 4] [--views 32] [--size 128]

Pins itself to one CPU and one thread (numpy, torch), writes a dataset into a temporary folder with
`generate_dataset` (all nine domains + point_info), prints views/second (wall and CPU time), the
bytes per view, and the extrapolation to 32 buildings x 64 views; the folder is deleted afterwards.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--buildings", type=int, default=4)
    p.add_argument("--views", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import torch

    torch.set_num_threads(1)
    from mas_flower.synthetic import generate_dataset

    n = args.buildings * args.views
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "synth"
        w0, c0 = time.perf_counter(), time.process_time()
        generate_dataset(out, args.buildings, args.views, args.size, args.seed)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        files = [f for f in out.rglob("*") if f.is_file()]
        total = sum(f.stat().st_size for f in files)
        blocks = sum(f.stat().st_blocks * 512 for f in files)
    per_view = total / n
    full = 32 * 64
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"size {args.size} px, {args.buildings} buildings x {args.views} views = {n} views, "
          f"{len(files)} files, CPUs allowed: {cpus}")
    print(f"views/second: {n / wall:.1f} (wall {wall:.2f} s), {n / cpu:.1f} per CPU-second (cpu {cpu:.2f} s)")
    print(f"disk: {per_view / 1e6:.4f} MB per view (file bytes), {blocks / n / 1e6:.4f} MB per view (allocated blocks)")
    print(f"extrapolated 32 x 64 x {args.size} px: {per_view * full / 1e6:.0f} MB file bytes, "
          f"{blocks / n * full / 1e6:.0f} MB allocated; {full / (n / wall) / 60:.1f} min on one core")


if __name__ == "__main__":
    main()
