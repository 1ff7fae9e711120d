"""How much the networks learn at a setting: FedAvg in one process (no Flower, no Ray), test skill per task.

Chooses run lengths and sizes by measurement (docs/benchmarks.md, section "Why the settings are what
they are"): for each setting it trains the all-in-one network (and, with --singles, one network per
task; with --pairs, every pair too) with the library's own `train_local` and example-weighted averaging
(FedAvg's arithmetic, as the ServerApp does it), then prints per task the test loss, the best constant's
loss (`mas_flower.constant`) and the skill, and with --pairs the pair-gain matrix g[i, j] = (L_i alone −
L_i with j) / L_i alone and its median |g|.

    python benchmarks/bench_learning.py --rounds 20 --epochs 1 --lr 0.1 --views 48 --size 64 --singles

Seconds are this process's (2 torch threads), without Flower's start-up: compare settings by them,
not with `flwr run`'s wall time.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mas_flower.constant import LabelHistogram, best_constants, constant_losses, skills
from mas_flower.data import list_buildings, open_building
from mas_flower.models import build_model
from mas_flower.synthetic.writer import generate_dataset
from mas_flower.training import TrainConfig, evaluate, train_local


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    total = float(sum(weights))
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = sum(s[key].double() * (w / total) for s, w in zip(states, weights, strict=True)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def test_losses(net: torch.nn.Module, buildings: list, split: str, constants: dict, batch: int
                ) -> tuple[dict[str, float], dict[str, float]]:
    tasks = net.tasks
    loss_sum = dict.fromkeys(tasks, 0.0)
    const_sum = dict.fromkeys(tasks, 0.0)
    n_all = 0
    for b in buildings:
        data = b.split(split)
        losses, n = evaluate(net, data, batch, "cpu", precision="fp32")
        for c in tasks:
            loss_sum[c] += losses[c] * n
        for batch_ in data.device_batches("cpu", batch):
            size = batch_["rgb"].shape[0]
            for c, v in constant_losses(constants, batch_, tasks).items():
                const_sum[c] += float(v) * size
        n_all += n
    return {c: v / n_all for c, v in loss_sum.items()}, {c: v / n_all for c, v in const_sum.items()}


def train(tasks: str, buildings: list, args: argparse.Namespace, constants: dict) -> dict[str, float]:
    net = build_model(args.model, tasks, image_size=args.size, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    state = net.state_dict()
    for r in range(args.rounds):
        lr = args.lr * (1 - r / args.rounds) ** 0.9
        chosen = rng.choice(len(buildings), size=args.clients, replace=False)
        states, weights = [], []
        for i in chosen:
            net.load_state_dict(state)
            cfg = TrainConfig(lr=lr, epochs=args.epochs, batch_size=args.batch, seed=args.seed * 1000 + r * 10 + int(i),
                              precision="fp32", num_threads=2)
            res = train_local(net, buildings[i].split("train"), cfg, "cpu")
            states.append({k: v.clone() for k, v in net.state_dict().items()})
            weights.append(res.num_examples)
        state = fedavg(states, weights)
    net.load_state_dict(state)
    losses, const = test_losses(net, buildings, args.split, constants, 64)
    return {"loss": losses, "const": const, "skill": skills(losses, const)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="sdnkt")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--buildings", type=int, default=6)
    p.add_argument("--views", type=int, default=48)
    p.add_argument("--size", type=int, default=64, help="image size")
    p.add_argument("--synth-size", type=int, default=0, help="synthetic render size (default: --size)")
    p.add_argument("--model", default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=None,
                   help="synthetic data set's seed (default: --seed); conf/quick-sdnkt.yaml keeps data seed 0 "
                        "for every run seed")
    p.add_argument("--split", default="test")
    p.add_argument("--singles", action="store_true", help="also one network per task")
    p.add_argument("--pairs", action="store_true", help="singles and every pair: the pair-gain matrix")
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "mas-bench-learning")
    args = p.parse_args()
    torch.set_num_threads(2)
    synth = args.synth_size or args.size
    data_seed = args.seed if args.data_seed is None else args.data_seed
    root = args.data / f"b{args.buildings}-v{args.views}-s{synth}-seed{data_seed}"
    t0 = time.perf_counter()
    generate_dataset(root, args.buildings, args.views, synth, data_seed, workers=2)
    buildings = [open_building(root, b, args.tasks, args.size, cache_dir=args.data / "cache")
                 for b in list_buildings(root)]
    hist = LabelHistogram(args.tasks)
    for b in buildings:
        for batch in b.split("train").device_batches("cpu", 64):
            hist.update(batch)
    constants = best_constants(hist)
    print(f"data {time.perf_counter() - t0:.1f} s; train views per building "
          f"{[len(b.split('train')) for b in buildings]}")
    t0 = time.perf_counter()
    allin = train(args.tasks, buildings, args, constants)
    print(f"all-in-one {time.perf_counter() - t0:.1f} s  " + "  ".join(
        f"{c}: {allin['loss'][c]:.4f}/{allin['const'][c]:.4f} skill {allin['skill'][c]:+.3f}" for c in args.tasks))
    if not (args.singles or args.pairs):
        return
    single = {}
    for c in args.tasks:
        t0 = time.perf_counter()
        single[c] = train(c, buildings, args, constants)
        print(f"single {c} {time.perf_counter() - t0:.1f} s  loss {single[c]['loss'][c]:.4f} "
              f"skill {single[c]['skill'][c]:+.3f}")
    if not args.pairs:
        return
    n = len(args.tasks)
    g = np.full((n, n), np.nan)
    for i, j in itertools.combinations(range(n), 2):
        a, b = args.tasks[i], args.tasks[j]
        pair = train(a + b, buildings, args, constants)
        for x, ix, jy in ((a, i, j), (b, j, i)):
            g[ix, jy] = (single[x]["loss"][x] - pair["loss"][x]) / single[x]["loss"][x]
        print(f"pair {a}{b}: g[{a}<-{b}] {g[i, j]:+.3f}  g[{b}<-{a}] {g[j, i]:+.3f}")
    off = [abs(v) for v in g[~np.isnan(g)]]
    print("g (row: task, column: partner):")
    for i, c in enumerate(args.tasks):
        print(f"  {c} " + " ".join("   .  " if np.isnan(v) else f"{v:+.3f}" for v in g[i]))
    print(f"median |g| {statistics.median(off):.3f}")


if __name__ == "__main__":
    main()
