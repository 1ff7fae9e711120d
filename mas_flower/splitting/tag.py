"""TAG network selection (Fifty et al., 2021): up to x overlapping groups of at least two tasks that
together cover every task; each task is served by the group where it scores best, and the mean of
those best scores is maximised (docs/design.md, section "Choosing the groups").

Exact for n <= `EXACT_MAX_N` (18; `optimal` True): each task's best group splits the tasks into at
most x blocks, so the answer is the best partition into 1..x blocks scored by each block's best
host group (`hosts.py`, O(3^n)), found by the subset DP (`subsets.py`). Fifty et al. instead search
combinations of candidate groups; that search (`cover.py`) is the fallback above 18 tasks, over
pairs, triples and the groups of local-search MAS partitions, followed by hill climbing (add or
remove one task in one group), with `optimal` False.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from mas_flower.splitting.cover import drop_redundant, select_cover
from mas_flower.splitting.hosts import best_host, host_values
from mas_flower.splitting.mas_search import local_search
from mas_flower.splitting.scoring import SplitResult, as_affinity, canonical, cover_score
from mas_flower.splitting.subsets import best_partition

EXACT_MAX_N = 18


def candidate_values(a: np.ndarray, groups: list[tuple[int, ...]]) -> np.ndarray:
    """values[c, j] = score of task j in group c (mean affinity onto j from the others), -inf if j ∉ c."""
    member = np.zeros((len(groups), a.shape[0]), dtype=bool)
    for row, g in enumerate(groups):
        member[row, list(g)] = True
    size = member.sum(axis=1, keepdims=True)
    return np.where(member, (member.astype(float) @ a) / (size - 1), -np.inf)


def _mask_to_group(mask: int, n: int) -> tuple[int, ...]:
    return tuple(i for i in range(n) if mask >> i & 1)


def tag_split(affinity: object, splits: int, *, time_limit: float = 10.0, seed: int = 0) -> SplitResult:
    """Up to `splits` overlapping groups (size >= 2, covering all tasks) with the best mean task score.

    Groups that are no task's best are dropped (fewer groups, same score), so fewer than `splits`
    groups may come back. `time_limit` and `seed` only matter above `EXACT_MAX_N` tasks.
    """
    a = as_affinity(affinity)
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"TAG needs at least 2 tasks (groups have 2 or more), got {n}")
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be between 1 and the number of tasks ({n}), got {splits}")
    if n <= EXACT_MAX_N:
        blocks, _ = best_partition(host_values(a), n, splits, at_most=True)
        picked = sorted({_mask_to_group(best_host(a, b, n)[0], n) for b in blocks})
        picked = [picked[i] for i in drop_redundant(candidate_values(a, picked), list(range(len(picked))))]
        return SplitResult(canonical(picked), cover_score(a, picked), True)
    rng = np.random.default_rng(seed)
    pool = set(combinations(range(n), 2)) | set(combinations(range(n), 3))
    for k in range(1, min(splits + 1, n) + 1):
        assign = local_search(a, k, rng)
        pool.update(g for g in (tuple(np.flatnonzero(assign == c).tolist()) for c in range(k)) if len(g) >= 2)
    groups = sorted(pool)
    values = candidate_values(a, groups)
    chosen, _, _, _ = select_cover(values, splits, time_limit=time_limit)
    picked = _improve(a, [groups[c] for c in chosen])
    picked = [picked[i] for i in drop_redundant(candidate_values(a, picked), list(range(len(picked))))]
    return SplitResult(canonical(picked), cover_score(a, picked), False)


def _improve(a: np.ndarray, groups: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Hill climbing on the chosen groups: add a task to, or remove one from, one group (keeping
    every group at >= 2 tasks and every task covered) while the score improves."""
    n = a.shape[0]
    member = np.zeros((len(groups), n), dtype=bool)
    for row, g in enumerate(groups):
        member[row, list(g)] = True
    while True:
        size = member.sum(axis=1)
        sums = member.astype(float) @ a
        vals = np.where(member, sums / (size[:, None] - 1), -np.inf)
        best, move = vals.max(axis=0).sum(), None
        for g, t in np.ndindex(member.shape):
            sign = -1 if member[g, t] else 1
            if size[g] + sign < 2 or (sign < 0 and member[:, t].sum() == 1):
                continue
            row = member[g].copy()
            row[t] = sign > 0
            new = np.where(row, (sums[g] + sign * a[t]) / (size[g] + sign - 1), -np.inf)
            total = np.maximum(np.delete(vals, g, axis=0).max(axis=0, initial=-np.inf), new).sum()
            if total > best + 1e-12:
                best, move = total, (g, t)
        if move is None:
            return [tuple(np.flatnonzero(r).tolist()) for r in member]
        member[move] = ~member[move]
