"""Best "host" group for every block of tasks: the reduction that makes TAG and HOA a partition DP.

In an overlapping choice each task is served by its best group, so the tasks split into blocks R,
each served by one host group g ⊇ R. Choosing up to x groups is therefore choosing a partition into
up to x blocks, each scored by h(R) = max over g ⊇ R, |g| >= 2 of sum over j in R of the mean of
M[i, j] over the other members i of g (a host may serve several blocks; that only uses fewer
groups). With X(g, R) = sum over i in g, j in R of M[i, j] (zero diagonal) the host score is
X(g, R) / (|g| - 1), computed for all 3^n pairs R ⊆ g on a ternary array (per task: outside g,
in g only, in R) and maximised over g for each R. Big task sets recurse on the most significant
task, carrying its contribution as linear terms (alpha per R member, beta per g member).
"""

from __future__ import annotations

import numpy as np

from mas_flower.splitting.subsets import BASE_BITS, reduce_ternary, subset_sums, ternary_index


def _bilinear(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """X(g, R) and |g| on the ternary array of all R ⊆ g over the tasks of m (same layout as
    `ternary_index`: each new task is the leading axis with states outside g, in g only, in R)."""
    x, size = np.zeros(1), np.zeros(1, dtype=np.int64)
    in_r, in_g_only = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
    for t in range(m.shape[0]):
        onto_r = subset_sums(m[t, :t])[in_r]  # t in g: its affinity onto the R members so far
        from_g = subset_sums(m[:t, t])[in_r | in_g_only]  # t in R: the g members' affinity onto t
        x = np.concatenate([x, x + onto_r, x + onto_r + from_g])
        size = np.concatenate([size, size + 1, size + 1])
        in_r, in_g_only = (np.concatenate([in_r, in_r, in_r + (1 << t)]),
                           np.concatenate([in_g_only, in_g_only + (1 << t), in_g_only]))
    return x, size


def host_values(m: np.ndarray) -> np.ndarray:
    """h[R] for every mask R (h[0] = -inf): the best host score of block R (see the module doc)."""
    m = np.array(m, dtype=float)
    np.fill_diagonal(m, 0.0)
    n = m.shape[0]
    base = min(n, BASE_BITS)
    x3, size3 = _bilinear(m[:base, :base])
    in_r, in_g_only = ternary_index(base)
    g3 = in_r | in_g_only

    def solve(k: int, alpha: np.ndarray, beta: np.ndarray, gamma: float, delta: int) -> np.ndarray:
        # max over g ⊇ R (tasks < k) of (X(g, R) + alpha.R + beta.g + gamma) / (|g| + delta - 1)
        if k == base:
            num = x3 + subset_sums(alpha)[in_r] + subset_sums(beta)[g3] + gamma
            den = size3 + delta - 1
            with np.errstate(divide="ignore", invalid="ignore"):
                val = np.where(den >= 1, num / den, -np.inf)
            return reduce_ternary(val, k, (0, 1))
        t = k - 1
        a_in = alpha[:t] + m[t, :t]  # t in g: its updates reach every R member
        outside = solve(t, alpha[:t], beta[:t], gamma, delta)
        g_only = solve(t, a_in, beta[:t], gamma + beta[t], delta + 1)
        in_block = solve(t, a_in, beta[:t] + m[:t, t], gamma + beta[t] + alpha[t], delta + 1)
        return np.concatenate([np.maximum(outside, g_only), in_block])

    h = solve(n, np.zeros(n), np.zeros(n), 0.0, 0)
    h[0] = -np.inf
    return h


def best_host(m: np.ndarray, block: int, n: int) -> tuple[int, float]:
    """The host g ⊇ block (|g| >= 2) with the best score for the block, and that score."""
    m = np.array(m, dtype=float)
    np.fill_diagonal(m, 0.0)
    outside = [i for i in range(n) if not block >> i & 1]
    supers = subset_sums(np.array([1 << i for i in outside], dtype=float)).astype(np.int64) + block
    member = (supers[:, None] >> np.arange(n)) & 1
    size = member.sum(axis=1)
    in_block = (block >> np.arange(n)) & 1
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(size >= 2, (member @ m) @ in_block / (size - 1), -np.inf)
    k = int(np.argmax(score))
    return int(supers[k]), float(score[k])
