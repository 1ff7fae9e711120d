"""Can a split choice be judged on this suite's output? Reads a bench suite folder and prints the figures.

    .venv/bin/python benchmarks/analyse_split.py ~/mas-flower/bench/quick-sdnkt [--task-set sdnkt] [--splits 2]

Needs the suite's oracle-x<splits> runs (every partition trained and tested, one run per seed); uses
its TAG runs (affinity measured in every round of the all-in-one network) and HOA runs (pair gains g)
when present. Prints:
1. The partition effect: a two-way analysis of variance of the partitions' total test losses, seeds ×
   partitions (`mas_flower.splitting.stability.partition_effect`). With p well above 0.05 the
   partitions differ no more than re-runs do, and the oracle's ranking is mostly noise. The same per
   task: a task whose loss depends on its partition while the total does not is traded against others.
2. How the partition ranking agrees between seeds (Spearman's ρ of the total test losses).
3. MAS's pick replayed on affinities averaged over the first w rounds of the all-in-one network, for
   several windows w, with its oracle rank (1 = best) and ρ(score, loss). The TAG run's all-in-one
   network is the merge stage's (same seed, same sampling) until MAS splits, so the window of the
   run's own `affinity-rounds` reproduces the oracle's recorded MAS rank: the check that this replay
   is faithful.
4. Agreement of the affinity with the pair gains g (Spearman's ρ over the off-diagonal entries) per
   window, and of each with itself across seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from mas_flower.methods.oracle import spearman
from mas_flower.splitting import mas_split, partition_score
from mas_flower.splitting.stability import partition_effect


def runs(folder: Path, stem: str) -> dict[int, Path]:
    """seed → run folder of the suite's runs named `<stem>-seed<k>`."""
    found = {}
    for path in sorted((folder / "runs").glob(f"{stem}-seed*")):
        if (path / "results.json").is_file():
            found[int(path.name.rsplit("seed", 1)[1])] = path
    return found


def load(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


def round_affinities(path: Path, federation: str = "all") -> list[np.ndarray]:
    """The per-round affinity of `federation` from a run's metrics.jsonl, in round order."""
    out = []
    for line in (path / "metrics.jsonl").read_text().splitlines():
        fed = json.loads(line).get("federations", {}).get(federation, {})
        if fed.get("affinity") is not None:
            out.append(np.asarray(fed["affinity"], dtype=float))
    return out


def off_diagonal(matrix: np.ndarray) -> list[float]:
    n = len(matrix)
    return [float(matrix[i][j]) for i, j in itertools.permutations(range(n), 2)]


def mean_pairwise(rows: list[list[float]]) -> float:
    return float(np.nanmean([spearman(a, b) for a, b in itertools.combinations(rows, 2)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", type=Path, help="a bench suite's output folder (holds runs/)")
    parser.add_argument("--task-set", default="sdnkt")
    parser.add_argument("--splits", type=int, default=2)
    args = parser.parse_args()
    tasks, index = args.task_set, {t: i for i, t in enumerate(args.task_set)}
    oracle = runs(args.suite, f"oracle-x{args.splits}-{tasks}")
    if len(oracle) < 2:
        raise SystemExit(f"{args.suite}: needs oracle-x{args.splits}-{tasks} runs of at least 2 seeds, "
                         f"found {len(oracle)}")
    seeds = sorted(oracle)
    parts = {s: {tuple(p["groups"]): p for p in load(oracle[s])["details"]["oracle_partitions"]} for s in seeds}
    keys = sorted(parts[seeds[0]])
    losses = np.array([[parts[s][k]["total_test_loss"] for k in keys] for s in seeds])
    fx = partition_effect(losses)
    print(f"{len(keys)} partitions × {len(seeds)} seeds (total test loss)")
    print(f"1. partition effect: F({fx.df_partition}, {fx.df_residual}) = {fx.f:.2f}, permutation p = "
          f"{fx.p_value:.3f}; partitions' spread (sd) {fx.effect_sd:.4f} against a re-run's {fx.noise_sd:.4f}")
    per_task = {t: partition_effect(np.array([[parts[s][k]["test_loss"][t] for k in keys] for s in seeds]))
                for t in tasks}
    print("   per task: " + ", ".join(f"{t} F {e.f:.1f} (p {e.p_value:.3f})" for t, e in per_task.items()))
    print(f"2. partition ranking between seeds: mean Spearman ρ {mean_pairwise([list(r) for r in losses]):+.2f}")
    tag = runs(args.suite, f"tag-x{args.splits}-{tasks}") or runs(args.suite, f"tag-x2-{tasks}")
    hoa = runs(args.suite, f"hoa-x{args.splits}-{tasks}") or runs(args.suite, f"hoa-x2-{tasks}")
    if not tag:
        print("3-4. no TAG runs: no per-round affinity of the whole training to replay")
        return
    config = load(oracle[seeds[0]])["config"]
    windows = sorted({config["affinity-rounds"], config["merge-rounds"], *range(2, config["merge-rounds"] + 1, 4)})
    gains = {s: off_diagonal(np.array(load(hoa[s])["details"]["pair_gain_val"], dtype=float))
             for s in hoa if s in tag}
    print(f"3-4. MAS's pick on the all-in-one affinity of rounds 1..w (recorded: w = {config['affinity-rounds']}, "
          f"ranks {[load(oracle[s])['details']['oracle_mas_rank'] for s in seeds]})")
    print(f"{'w':>3} {'picks (oracle rank)':<48} {'ρ(score, loss)':>22} {'ρ(Z, g)':>8} {'ρ(Z, Z) seeds':>14}")
    for w in windows:
        picks, rhos, zs = [], [], {}
        for s in seeds:
            if s not in tag:
                continue
            z = np.mean(round_affinities(tag[s])[:w], axis=0)
            zs[s] = off_diagonal(z)
            pick = tuple(mas_split(z, args.splits).labels(tasks))
            order = sorted(keys, key=lambda k, s=s: parts[s][k]["total_test_loss"])
            rank = 1 + next(i for i, k in enumerate(order) if sorted(k) == sorted(pick))
            score = [partition_score(z, [tuple(index[c] for c in g) for g in k]) for k in keys]
            rhos.append(spearman(score, [parts[s][k]["total_test_loss"] for k in keys]))
            picks.append(f"{'/'.join(pick)} ({rank})")
        zg = np.nanmean([spearman(zs[s], gains[s]) for s in gains]) if gains else float("nan")
        print(f"{w:>3} {', '.join(picks):<48} {' '.join(f'{r:+.2f}' for r in rhos):>22} {zg:>+8.2f} "
              f"{mean_pairwise(list(zs.values())):>+14.2f}")
    if gains:
        print(f"pair gains g between seeds: mean Spearman ρ {mean_pairwise(list(gains.values())):+.2f}")


if __name__ == "__main__":
    main()
