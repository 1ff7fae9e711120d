"""HOA (Standley et al., 2020): choose groups from single-task and pair-trained losses.

A task's loss in a group of two or more is estimated as the mean of its losses in the pairs it forms
with the other members (the "higher order approximation"); alone it is its single-task loss. As in
Standley et al., the chosen groups may overlap (singletons included) and each task is served by the
group with its lowest estimate; the sum of those estimates is minimised using at most x groups.

Search: exact, as for TAG (`hosts.py`): the tasks split into at most x blocks, each served by the
host group with the lowest summed estimate for it, and the subset DP picks the blocks. O(3^n) time,
so at most `MAX_N` (18) tasks; HOA needs n (n - 1) / 2 pair trainings, so real uses are far smaller.

Budget: by default every network costs 1, so at most x networks. Standley et al.'s released code
charges a single-task network 0.5 (it is about half a multi-task network's inference cost);
`single_cost` sets that price: then the networks' total cost must be at most x, and the search
enumerates the set S of tasks served alone (cost `single_cost` each) and splits the others into at
most ⌊x − single_cost·|S|⌋ blocks, each served by its best group of two or more tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mas_flower.splitting.cover import drop_redundant
from mas_flower.splitting.hosts import best_host, host_values
from mas_flower.splitting.scoring import SplitResult, canonical
from mas_flower.splitting.subsets import best_partition

MAX_N = 18

Labels = str | Sequence[str]


def _labels(single: Mapping[str, float] | Sequence[float], tasks: Labels | None) -> list[str]:
    if tasks is not None:
        labels = list(tasks)
    elif isinstance(single, Mapping):
        labels = [str(k) for k in single]
    else:
        labels = [str(i) for i in range(len(single))]
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate task labels in {labels}")
    return labels


def pair_matrix(pair: Mapping[tuple[str, str], tuple[float, float]] | Sequence[Sequence[float]] | np.ndarray,
                labels: list[str]) -> np.ndarray:
    """P[i, j] = loss of task j when trained together with task i (diagonal 0), from a matrix or from
    {(a, b): (loss of a, loss of b)} with every unordered pair given exactly once."""
    n = len(labels)
    if not isinstance(pair, Mapping):
        p = np.array(pair, dtype=float)
        if p.shape != (n, n):
            raise ValueError(f"pair loss matrix must be {n}x{n} for tasks {labels}, got shape {p.shape}")
        np.fill_diagonal(p, 0.0)
    else:
        index = {t: i for i, t in enumerate(labels)}
        p = np.full((n, n), np.nan)
        np.fill_diagonal(p, 0.0)
        for key, losses in pair.items():
            if len(key) != 2 or key[0] not in index or key[1] not in index or key[0] == key[1]:
                raise ValueError(f"pair key {key!r} is not two different tasks of {labels}")
            i, j = index[key[0]], index[key[1]]
            if not np.isnan(p[i, j]):
                raise ValueError(f"pair {key!r} is given twice")
            p[j, i], p[i, j] = (float(v) for v in losses)  # loss of key[0] (trained with key[1]), of key[1]
        if np.isnan(p).any():
            i, j = np.argwhere(np.isnan(p))[0]
            raise ValueError(f"pair losses missing for ({labels[i]!r}, {labels[j]!r})")
    if not np.isfinite(p).all():
        raise ValueError("pair losses must be finite")
    return p


def estimated_losses(single: np.ndarray, p: np.ndarray, group: Sequence[int]) -> dict[int, float]:
    """Each member's estimated loss in the group: mean pair loss with the others, or its single loss."""
    g = sorted(set(int(t) for t in group))
    if len(g) == 1:
        return {g[0]: float(single[g[0]])}
    sums = p[np.ix_(g, g)].sum(axis=0) - np.diag(p)[g]
    return {j: float(s) / (len(g) - 1) for j, s in zip(g, sums, strict=True)}


def hoa_total(single: np.ndarray, p: np.ndarray, groups: Sequence[Sequence[int]]) -> float:
    """Estimated total loss of overlapping groups: each task takes its lowest estimate among them."""
    n = len(single)
    best = np.full(n, np.inf)
    for g in groups:
        for j, v in estimated_losses(single, p, g).items():
            best[j] = min(best[j], v)
    if np.isinf(best).any():
        raise ValueError(f"groups {list(groups)} do not cover tasks {np.flatnonzero(np.isinf(best)).tolist()}")
    return float(best.sum())


def hoa_split(single: Mapping[str, float] | Sequence[float],
              pair: Mapping[tuple[str, str], tuple[float, float]] | Sequence[Sequence[float]] | np.ndarray,
              splits: int, *, tasks: Labels | None = None, single_cost: float = 1.0) -> SplitResult:
    """At most `splits` groups (overlapping, singletons allowed) minimising the estimated total loss.

    `single`: loss of each task trained alone ({label: loss} or a list in task order). `pair`: a
    matrix P[i][j] = loss of j trained with i, or {(a, b): (loss of a, loss of b)}. `tasks` fixes the
    task order (default: the keys of `single`). The result's `score` is the estimated total loss
    (lower is better); groups that serve no task are dropped. `single_cost` (in (0, 1]) is what a
    single-task network costs against the budget of x (see the module docstring).
    """
    labels = _labels(single, tasks)
    n = len(labels)
    s = np.array([single[t] for t in labels] if isinstance(single, Mapping) else single, dtype=float)
    if s.shape != (n,) or not np.isfinite(s).all():
        raise ValueError(f"single-task losses must be {n} finite numbers for tasks {labels}")
    p = pair_matrix(pair, labels)
    if not 1 <= n <= MAX_N:
        raise ValueError(f"HOA search supports 1 to {MAX_N} tasks, got {n}")
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be between 1 and the number of tasks ({n}), got {splits}")
    if not 0 < single_cost <= 1:
        raise ValueError(f"single_cost={single_cost} must be in (0, 1]")
    if single_cost != 1:
        return _priced_split(s, p, splits, single_cost)
    h = host_values(-p)  # best host per block for minus the loss: a maximisation
    alone = np.maximum(h[1 << np.arange(n)], -s)
    h[1 << np.arange(n)] = alone
    blocks, _ = best_partition(h, n, splits, at_most=True)
    hosts = set()
    for b in blocks:
        if b & (b - 1) == 0 and -s[b.bit_length() - 1] >= alone[b.bit_length() - 1]:
            hosts.add((b.bit_length() - 1,))
        else:
            g = best_host(-p, b, n)[0]
            hosts.add(tuple(i for i in range(n) if g >> i & 1))
    return _without_redundant(s, p, sorted(hosts))


def _priced_split(s: np.ndarray, p: np.ndarray, splits: int, single_cost: float) -> SplitResult:
    """`hoa_split` when a single-task network costs `single_cost` < 1: the best over every set S of
    tasks served alone of S's singles plus the best ⌊x − single_cost·|S|⌋ or fewer blocks of the rest."""
    n = len(s)
    h = host_values(-p)  # hosts of two or more tasks
    best: tuple[float, list[tuple[int, ...]]] | None = None
    for alone in range(1 << n):
        rest = [i for i in range(n) if not alone >> i & 1]
        budget = int(np.floor(splits - single_cost * (n - len(rest)) + 1e-9))
        if budget < (1 if rest else 0):
            continue
        groups = [(i,) for i in range(n) if alone >> i & 1]
        value = -float(s[[g[0] for g in groups]].sum()) if groups else 0.0
        if rest:
            sub = np.full(1 << len(rest), -np.inf)
            for m in range(1, 1 << len(rest)):
                sub[m] = h[sum(1 << t for k, t in enumerate(rest) if m >> k & 1)]
            blocks, total = best_partition(sub, len(rest), min(budget, len(rest)), at_most=True)
            value += total
            for b in blocks:
                mask = sum(1 << t for k, t in enumerate(rest) if b >> k & 1)
                g = best_host(-p, mask, n)[0]
                groups.append(tuple(i for i in range(n) if g >> i & 1))
        if best is None or value > best[0] + 1e-12:
            best = (value, groups)
    assert best is not None  # S = {} always fits: x >= 1 block
    return _without_redundant(s, p, sorted(set(best[1])))


def _without_redundant(s: np.ndarray, p: np.ndarray, picked: list[tuple[int, ...]]) -> SplitResult:
    """The chosen groups less those no task needs (each task keeps its best estimated loss)."""
    values = np.full((len(picked), len(s)), -np.inf)
    for row, g in enumerate(picked):
        for j, v in estimated_losses(s, p, g).items():
            values[row, j] = -v
    picked = [picked[i] for i in drop_redundant(values, list(range(len(picked))))]
    return SplitResult(canonical(picked), hoa_total(s, p, picked), True)


def pair_gains(single: Sequence[float], pair: np.ndarray) -> np.ndarray:
    """The relative pair gain g[i, j] = (L_j alone − L_j with i) / L_j alone (Standley et al.'s
    measure of transfer, oriented like the affinity: row i helps column j); NaN on the diagonal.

    `single[j]` is task j's loss as a single-task network, `pair[i, j]` task j's loss in the network
    of pair {i, j} (HOA's `hoa_pair_val_loss`). g > 0: training with i helped j. Raises ValueError
    for mismatched shapes or a non-positive single loss.
    """
    s = np.asarray(single, dtype=float)
    p = np.asarray(pair, dtype=float)
    if p.shape != (len(s), len(s)):
        raise ValueError(f"pair losses of shape {p.shape} for {len(s)} single losses")
    if not np.all(s > 0):
        raise ValueError(f"single-task losses must be positive, got {s.tolist()}")
    g = (s[None, :] - p) / s[None, :]
    np.fill_diagonal(g, np.nan)
    return g


def median_abs_gain(g: np.ndarray) -> float:
    """Median |g| over the off-diagonal entries: how strongly tasks interact (Standley et al.'s
    Taskonomy measurements give 0.023–0.072; below ~0.01 grouping cannot pay beyond noise)."""
    g = np.asarray(g, dtype=float)
    off = g[~np.eye(len(g), dtype=bool)]
    return float(np.median(np.abs(off[np.isfinite(off)])))
