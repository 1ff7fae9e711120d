"""Time the group searches (MAS, TAG) on random affinity matrices.

    .venv/bin/python benchmarks/bench_split.py [--sizes 5 9 12 14 16 26] [--splits 2 3 4] [--repeats 3]

For each method, task count n and number of groups x: median wall and CPU seconds over `repeats`
standard normal matrices (seeded; clustered ones with --planted), how many answers were proven
optimal, and the median score. Where the search stopped at its time limit, "gap" is the median of
upper bound minus score. The limit is wall clock: on a busy machine a stopped search had less CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from mas_flower.splitting import mas_split, tag_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 9, 12, 14, 16, 26])
    parser.add_argument("--splits", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=["mas", "tag"], choices=["mas", "tag"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--planted", type=int, default=0,
                        help="if > 0: that many task clusters (affinity 1 within, -0.5 across) plus N(0, 0.5) noise")
    args = parser.parse_args()
    search = {"mas": mas_split, "tag": tag_split}
    print(f"{'method':6} {'n':>3} {'x':>2} {'wall s':>8} {'cpu s':>8} {'optimal':>8} {'score':>8} {'gap':>7}")
    for method in args.methods:
        for n in args.sizes:
            for x in args.splits:
                if x > n:
                    continue
                seconds, cpu, proven, scores, gaps = [], [], 0, [], []
                for rep in range(args.repeats):
                    rng = np.random.default_rng([args.seed, n, rep])
                    a = rng.normal(size=(n, n))
                    if args.planted:
                        cluster = rng.integers(0, args.planted, n)
                        a = np.where(cluster[:, None] == cluster[None, :], 1.0, -0.5) + 0.5 * a
                    start, start_cpu = time.perf_counter(), time.process_time()
                    result = search[method](a, x, time_limit=args.time_limit)
                    seconds.append(time.perf_counter() - start)
                    cpu.append(time.process_time() - start_cpu)
                    proven += result.optimal
                    scores.append(result.score)
                    if result.upper_bound is not None:
                        gaps.append(result.upper_bound - result.score)
                gap = f"{statistics.median(gaps):7.3f}" if gaps else f"{'-':>7}"
                print(f"{method:6} {n:3d} {x:2d} {statistics.median(seconds):8.3f} {statistics.median(cpu):8.3f} "
                      f"{proven:>4d}/{args.repeats:<3d} {statistics.median(scores):8.4f} {gap}", flush=True)


if __name__ == "__main__":
    main()
