"""MAS split: the partition of the tasks into exactly x groups with the best mean task score.

Which search runs (all exact unless a time limit stops the last one, and then `optimal` is False):
- x == 1 or x == n: there is only one partition.
- n small enough (`dp_max_cost`): dynamic programme over subsets. v(S) = summed score of S as one
  group for all 2^n subsets, then f_k(M) = max over T ⊆ M containing M's lowest task of
  v(T) + f_{k-1}(M \\ T). Each level is a max-plus subset convolution, O(3^n), vectorised by lifting
  the (T, M \\ T) pairs onto a ternary array (one axis per task: out / in the rest / in T) and
  maximising axis by axis. Task 0's group is chosen last, so the levels need only the other n - 1
  tasks: (x - 2) * 3^(n-1) / 2 pair evaluations (n = 18, x = 4: about a second).
- x == 2 and n larger: every bipartition, 2^(n-1) of them, in blocks (meet in the middle: a
  subset's pair sum is lo part + hi part + a cross term from one matrix product). n = 26: seconds.
- otherwise: branch and bound (`mas_search.py`) seeded by local search, with a time limit.
"""

from __future__ import annotations

import numpy as np

from mas_flower.splitting.mas_search import branch_and_bound
from mas_flower.splitting.scoring import SplitResult, as_affinity, canonical, partition_score, singleton_scores
from mas_flower.splitting.subsets import best_partition, pair_sums, popcounts

#: Above this many (group, rest) pair evaluations, (x - 2) * 3^(n-1) / 2, the DP is not used: about
#: 10 s on one core; with the n <= 20 cap: every x for n <= 18, x <= 12 for n = 19, x <= 5 for n = 20.
DP_MAX_COST = 2e9


def mas_split(affinity: object, splits: int, *, time_limit: float = 10.0, seed: int = 0,
              dp_max_cost: float = DP_MAX_COST) -> SplitResult:
    """Best partition of the tasks into exactly `splits` non-empty groups (docs/design.md, section
    "Choosing the groups").

    `affinity[i][j]` = Z[i -> j]. The score is the mean over tasks of each task's score. The answer is
    proven optimal except when the branch and bound hits `time_limit` seconds; then `optimal` is
    False and `upper_bound` bounds the best score. Ties go to the first partition found (deterministic).
    """
    a = as_affinity(affinity)
    n = a.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be between 1 and the number of tasks ({n}), got {splits}")
    if splits == n or splits == 1:
        groups = [(i,) for i in range(n)] if splits == n else [tuple(range(n))]
        return SplitResult(canonical(groups), partition_score(a, groups), True)
    if (splits - 2) * 3.0 ** (n - 1) / 2 <= dp_max_cost and n <= 20:  # 2^n tables: 8 MB at 20
        groups = _dp_partition(a, splits)
    elif splits == 2:
        groups = _best_bipartition(a)
    else:
        return branch_and_bound(a, splits, time_limit=time_limit, seed=seed)
    return SplitResult(canonical(groups), partition_score(a, groups), True)


def subset_values(a: np.ndarray) -> np.ndarray:
    """v[S] = summed MAS score of the tasks of S when S is one group, for every bitmask S (v[0] = -inf)."""
    n = a.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = pair_sums(a + a.T) / (popcounts(n) - 1)
    v[1 << np.arange(n)] = singleton_scores(a)
    v[0] = -np.inf
    return v


def _dp_partition(a: np.ndarray, splits: int) -> list[tuple[int, ...]]:
    n = a.shape[0]
    blocks, _ = best_partition(subset_values(a), n, splits)
    return [tuple(i for i in range(n) if g >> i & 1) for g in blocks]


def _half_tables(a: np.ndarray, tasks: np.ndarray, other: np.ndarray):
    """For subsets of `tasks`: pair sums, sizes, singleton score (or -inf) and link sums to `other`."""
    b = a + a.T
    w = pair_sums(b[np.ix_(tasks, tasks)])
    pc = popcounts(len(tasks))
    single = np.full(1 << len(tasks), -np.inf)
    single[1 << np.arange(len(tasks))] = singleton_scores(a)[tasks]
    link = np.zeros((1, len(other)))
    for i in tasks:
        link = np.concatenate([link, link + b[i, other]])
    return w, pc, single, link


def _best_bipartition(a: np.ndarray, block: int = 1 << 20) -> list[tuple[int, ...]]:
    """Best split into exactly 2 groups by scoring all 2^(n-1) bipartitions in blocks.

    A subset S = lo ∪ hi of the two halves of the task list has pair sum
    W(lo) + W(hi) + link(lo) · indicator(hi), so a block of (lo, hi) pairs is one matrix product.
    The complement of (lo, hi) is (~lo, ~hi): rows lo_all - lo, and the hi block reversed.
    """
    n = a.shape[0]
    lo_t, hi_t = np.arange((n + 1) // 2), np.arange((n + 1) // 2, n)
    w_lo, pc_lo, s_lo, link = _half_tables(a, lo_t, hi_t)
    w_hi, pc_hi, s_hi, _ = _half_tables(a, hi_t, lo_t)
    ind_hi = ((np.arange(1 << len(hi_t))[:, None] >> np.arange(len(hi_t))) & 1).astype(float)
    lo_all, hi_all = (1 << len(lo_t)) - 1, (1 << len(hi_t)) - 1
    odd = np.arange(1, lo_all + 1, 2)  # lo parts containing task 0, so each bipartition counts once

    def values(lo: np.ndarray, hi: slice) -> np.ndarray:
        w = w_lo[lo, None] + w_hi[None, hi] + link[lo] @ ind_hi[hi].T
        pc = pc_lo[lo, None] + pc_hi[None, hi]
        with np.errstate(divide="ignore", invalid="ignore"):
            val = w / (pc - 1)
        one = pc == 1  # a singleton: one half holds one task, the other is empty (its score -inf)
        val[one] = np.maximum(s_lo[lo, None], s_hi[None, hi])[one]
        val[pc == 0] = -np.inf
        return val

    cols = max(1, block // len(odd))
    best, arg = -np.inf, (0, 0)
    for h0 in range(0, hi_all + 1, cols):
        h1 = min(h0 + cols, hi_all + 1)
        total = values(odd, slice(h0, h1)) + values(lo_all - odd, slice(hi_all - h1 + 1, hi_all - h0 + 1))[:, ::-1]
        k = int(np.argmax(total))
        if total.flat[k] > best:
            best, arg = float(total.flat[k]), (int(odd[k // total.shape[1]]), h0 + k % total.shape[1])
    lo, hi = arg
    first = [int(t) for i, t in enumerate(lo_t) if lo >> i & 1] + [int(t) for i, t in enumerate(hi_t) if hi >> i & 1]
    return [tuple(first), tuple(sorted(set(range(n)) - set(first)))]
