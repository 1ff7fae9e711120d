"""Cost of the lookahead affinity, and how well the first-order approximation agrees with the exact one.

Timing: one local epoch (--batches batches of --batch-size) with affinity off, exact and first-order
at ρ = --every, for each model and task set; median over --repeats interleaved runs of process CPU
time (one thread, so it is robust to other processes on a shared machine) and of wall time.
  overhead per epoch  o = t(affinity) / t(off) − 1
  paper run           affinity in the first 10 of 100 rounds, E = 5 local epochs:
                      o × (epochs with affinity) / (all epochs): o × 50/500 measuring every epoch,
                      o × 10/500 with first-epoch-only (computed from o; epochs cost the same)
The paper reports about 2 % of all-in-one compute.

Agreement: the tiny model trained for --warmup epochs, then --agreement-epochs more epochs measuring
on every batch, once exact and once first-order (same seed: identical trajectory and batches);
Spearman rank correlation of the off-diagonal entries, sign agreement, and the MAS 2- and 3-splits
chosen from each matrix (mas_flower.splitting). Data: the synthetic generator when it is available
(real structure between tasks), else random tensors (said in the output).

    .venv/bin/python benchmarks/bench_affinity.py [--models tiny xception] [--size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mas_flower.data.random_split import RandomSplit
from mas_flower.models import build_model
from mas_flower.training import TrainConfig, train_local

PAPER_AFFINITY_ROUNDS, PAPER_ROUNDS, PAPER_EPOCHS = 10, 100, 5


def time_epochs(model: str, tasks: str, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Median (cpu, wall) seconds of one epoch per mode."""
    data = RandomSplit(tasks, args.batch_size * args.batches, args.size)
    torch.manual_seed(0)
    start = build_model(model, tasks, image_size=args.size)
    modes = {"off": (0, "exact"), "exact": (args.every, "exact"), "first_order": (args.every, "first_order")}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    wall: dict[str, list[float]] = {m: [] for m in modes}
    warm = RandomSplit(tasks, args.batch_size, args.size)
    train_local(copy.deepcopy(start), warm, TrainConfig(lr=0.01, batch_size=args.batch_size, affinity_every=1))
    for _ in range(args.repeats):
        for name, (every, mode) in modes.items():
            net = copy.deepcopy(start)
            cfg = TrainConfig(lr=0.01, batch_size=args.batch_size, affinity_every=every, affinity_mode=mode)
            t0 = time.process_time()
            result = train_local(net, data, cfg)
            cpu[name].append(time.process_time() - t0)
            wall[name].append(result.seconds)
    return {m: (statistics.median(cpu[m]), statistics.median(wall[m])) for m in modes}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _splitter():
    try:
        from mas_flower.splitting import mas_partition as split
    except ImportError:
        try:
            from mas_flower.splitting.mas import mas_split as split
        except ImportError:
            return None
    return split


def _agreement_data(tasks: str, args: argparse.Namespace, tmp: Path):
    try:
        from mas_flower.data import open_building
        from mas_flower.synthetic import generate_dataset
    except ImportError:
        return RandomSplit(tasks, 8 * args.agreement_batch_size, args.size), "random tensors (no synthetic generator)"
    root = tmp / "synthetic"
    generate_dataset(root, buildings=1, views=args.agreement_views, size=args.size, seed=0)
    building = sorted(p.name for p in (root / "rgb").iterdir())[0]
    split = open_building(root, building, tasks, args.size).split("train")
    return split, f"synthetic building {building!r}, {len(split)} training views at {args.size} px"


def agreement(tasks: str, args: argparse.Namespace, tmp: Path) -> None:
    data, source = _agreement_data(tasks, args, tmp)
    torch.manual_seed(0)
    net = build_model(args.agreement_model, tasks, image_size=args.size)
    train_local(net, data, TrainConfig(lr=args.lr, epochs=args.warmup, batch_size=args.agreement_batch_size))
    mats = {}
    for mode in ("exact", "first_order"):
        trained = copy.deepcopy(net)
        cfg = TrainConfig(lr=args.lr, epochs=args.agreement_epochs, batch_size=args.agreement_batch_size,
                          affinity_every=1, affinity_mode=mode, seed=1)
        result = train_local(trained, data, cfg)
        mats[mode] = result.affinity
    off = ~np.eye(len(tasks), dtype=bool)
    e, f = mats["exact"][off], mats["first_order"][off]
    print(f"  {tasks}: {source}; {args.agreement_model}, lr {args.lr}, {result.affinity_count} lookahead batches")
    signs = np.mean(np.sign(e) == np.sign(f))
    print(f"    Spearman(off-diagonal) = {_spearman(e, f):.3f}, sign agreement = {signs:.2f}")
    split = _splitter()
    if split is None:
        print("    (mas_flower.splitting not available: splits not compared)")
        return
    for x in (2, 3):
        groups = {m: ["".join(tasks[i] for i in g) for g in split(mats[m], x).groups] for m in mats}
        same = "agree" if groups["exact"] == groups["first_order"] else "DIFFER"
        print(f"    MAS {x}-split: exact {','.join(groups['exact'])}  first-order "
              f"{','.join(groups['first_order'])}  -> {same}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "xception"])
    p.add_argument("--task-sets", nargs="+", default=["sdnkt", "sdnkterca"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=10, help="batches per timed epoch")
    p.add_argument("--every", type=int, default=5, help="ρ")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--agreement-model", default="tiny")
    p.add_argument("--agreement-views", type=int, default=160)
    p.add_argument("--agreement-batch-size", type=int, default=16)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--agreement-epochs", type=int, default=2)
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--skip-agreement", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if not args.skip_timing:
        frac_all = PAPER_AFFINITY_ROUNDS * PAPER_EPOCHS / (PAPER_ROUNDS * PAPER_EPOCHS)
        frac_first = PAPER_AFFINITY_ROUNDS / (PAPER_ROUNDS * PAPER_EPOCHS)
        print(f"timing: 1 epoch = {args.batches} batches x {args.batch_size} at {args.size} px, ρ = {args.every}, "
              f"{args.threads} thread(s), median of {args.repeats}; CPU s (wall s)")
        print(f"paper run: affinity in {PAPER_AFFINITY_ROUNDS}/{PAPER_ROUNDS} rounds, E = {PAPER_EPOCHS}: "
              f"fraction of epochs measuring {frac_all:.2f} (all epochs) / {frac_first:.2f} (first epoch only);"
              " paper's figure ~2 %")
        print(f"{'model':9} {'tasks':10} {'mode':12} {'epoch':>16} {'per epoch':>10} {'paper run':>10} "
              f"{'paper, 1st-epoch-only':>22}")
        for model in args.models:
            for tasks in args.task_sets:
                t = time_epochs(model, tasks, args)
                base = t["off"][0]
                print(f"{model:9} {tasks:10} {'off':12} {t['off'][0]:7.2f} ({t['off'][1]:6.2f})")
                for mode in ("exact", "first_order"):
                    o = t[mode][0] / base - 1
                    print(f"{model:9} {tasks:10} {mode:12} {t[mode][0]:7.2f} ({t[mode][1]:6.2f}) {o:9.1%} "
                          f"{o * frac_all:9.2%} {o * frac_first:21.2%}")
    if not args.skip_agreement:
        print("agreement of first-order with exact affinity:")
        with tempfile.TemporaryDirectory() as tmp:
            for tasks in args.task_sets:
                agreement(tasks, args, Path(tmp))


if __name__ == "__main__":
    main()
