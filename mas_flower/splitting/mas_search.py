"""MAS split for task sets too large for the subset DP: local search, then branch and bound.

Local search (seeded restarts; best single-task move or two-task swap until none improves) gives a
good partition quickly. Branch and bound then assigns tasks one at a time (strongly linked tasks
first) to an open group or a new one, and prunes a node when an upper bound on every completion is
no better than the best partition known. The bound is per task: an assigned task's final score is
the mean of its current group's affinities onto it plus those of tasks that may still join, at
best the top-m remaining ones for the best m; an unassigned task's is the same for each open group
it could join (whose members it must then take) or, for a new group, its singleton score or its
largest remaining affinity. Capacity ("exactly x groups") limits how many may still join, and so
how many tasks that could still end alone (singleton score) can have company at all: at most twice
the number of joiners left, which is what makes the bound bite when most groups are singletons.

If the time limit stops the search, the answer is the best partition found, `optimal` is False and
`upper_bound` is the largest bound among the unexplored nodes: the true optimum lies in between.
"""

from __future__ import annotations

import time

import numpy as np

from mas_flower.splitting.scoring import SplitResult, as_affinity, canonical, partition_score, singleton_scores


def _group_values(w: np.ndarray, size: np.ndarray, lone: np.ndarray) -> np.ndarray:
    """Summed score of groups with pair sum w and size; `lone` is the singleton score if size == 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(size >= 2, w / (size - 1), lone)


def local_search(a: np.ndarray, x: int, rng: np.random.Generator, restarts: int = 32) -> np.ndarray:
    """Best assignment (task -> group id in 0..x-1, all groups non-empty) over seeded restarts of
    steepest ascent with moves and swaps."""
    a = as_affinity(a)
    n = a.shape[0]
    b = a + a.T
    single = singleton_scores(a)
    idx = np.arange(n)
    best, best_val = np.zeros(n, dtype=np.int64), -np.inf
    for _ in range(restarts):
        assign = rng.integers(0, x, n)
        assign[rng.permutation(n)[:x]] = np.arange(x)
        for _ in range(100 * n * n):  # each step strictly improves; the cap only guards rounding
            onehot = np.eye(x)[assign]
            link = b @ onehot                           # link[j, g] = sum over i in g of b[i, j]
            size = onehot.sum(axis=0)
            w = 0.5 * (link * onehot).sum(axis=0)       # pair sum of each group
            lone = (onehot * single[:, None]).sum(axis=0)  # singleton score of a one-task group
            val = _group_values(w, size, lone)
            g = assign
            mate = (onehot.T @ idx).astype(np.int64)[g] - idx  # the other member of a pair
            mate = np.where(size[g] == 2, mate, idx)
            # move j from its group g to group h
            old_new = _group_values(w[g] - link[idx, g], size[g] - 1, single[mate])
            new_h = (w[None, :] + link) / np.maximum(size[None, :], 1)
            move = old_new[:, None] + new_h - val[g][:, None] - val[None, :]
            move[(size[g] < 2)[:, None] | (g[:, None] == np.arange(x)[None, :])] = -np.inf
            # swap j (in g) with l (in h)
            lg = link[:, g]                              # lg[l, j] = link[l, g_j]
            wg = w[g][:, None] - link[idx, g][:, None] + lg.T - b
            wh = w[g][None, :] - link[idx, g][None, :] + lg - b
            swap = (_group_values(wg, size[g][:, None], single[None, :])
                    + _group_values(wh, size[g][None, :], single[:, None])
                    - val[g][:, None] - val[g][None, :])
            swap[g[:, None] == g[None, :]] = -np.inf
            i_move, i_swap = int(np.argmax(move)), int(np.argmax(swap))
            gain_move, gain_swap = move.flat[i_move], swap.flat[i_swap]
            if max(gain_move, gain_swap) <= 1e-12:
                break
            if gain_move >= gain_swap:
                assign[i_move // x] = i_move % x
            else:
                j, k = divmod(i_swap, n)
                assign[j], assign[k] = assign[k], assign[j]
        total = float(val.sum())
        if total > best_val:
            best, best_val = assign.copy(), total
    return best


def _link_order(a: np.ndarray) -> np.ndarray:
    """Tasks ordered so that each next one is the most strongly linked to those before it."""
    s = np.abs(a) + np.abs(a.T)
    order = [int(np.argmax(s.sum(axis=0)))]
    rest = set(range(a.shape[0])) - set(order)
    while rest:
        nxt = max(sorted(rest), key=lambda j: s[order, j].sum())
        order.append(nxt)
        rest.remove(nxt)
    return np.array(order)


class _Search:
    def __init__(self, a: np.ndarray, x: int, deadline: float) -> None:
        n = self.n = a.shape[0]
        self.a, self.x, self.deadline = a, x, deadline
        self.single = singleton_scores(a)
        no_self = a.copy()
        np.fill_diagonal(no_self, -np.inf)
        # top[t][j, m]: sum of the m largest A[i, j] over unassigned i >= t, i != j (-inf past the end)
        self.top = []
        for t in range(n + 1):
            desc = -np.sort(-no_self[t:, :], axis=0)
            self.top.append(np.concatenate([np.zeros((1, n)), np.cumsum(desc, axis=0)]).T)
        self.index = np.arange(n + 1)
        self.none = np.full(n, -np.inf)
        self.colsum = np.zeros((x, n))
        self.size = np.zeros(x, dtype=np.int64)
        self.assign = np.full(n, -1)
        self.best_sum, self.best_assign = -np.inf, None
        self.open_bound = -np.inf
        self.aborted = False
        self.nodes = 0

    def bound(self, t: int, k: int) -> float:
        """Upper bound on the summed task scores of any completion of the first t assignments.

        Tasks that may still end alone (assigned singletons, and unassigned ones while a group can
        be opened) take their singleton score, plus the best gains from company for at most
        2 * spare of them: each task with company is a joiner or a group some joiner joined.
        """
        n, x = self.n, self.x
        spare = (n - t) - (x - k)  # remaining tasks free to join a group rather than open one
        top = self.top[t]
        slots = 2 * spare
        total, alone, company = 0.0, self.single.copy(), self.none.copy()
        if t:
            g = self.assign[:t]
            c, d = self.colsum[g, self.index[:t]], self.size[g] - 1
            with np.errstate(divide="ignore", invalid="ignore"):
                v = (c[:, None] + top[:t, : spare + 1]) / (d[:, None] + self.index[: spare + 1])
            grouped = d > 0
            total += float(v[grouped].max(axis=1).sum())
            alone[:t][grouped] = 0.0  # counted in total; no company gain either
            company[:t][grouped] = 0.0
            if spare >= 1:
                company[:t][~grouped] = v[~grouped, 1:].max(axis=1)
        if t < n:
            if k and spare >= 1:  # join an open group (taking its members) plus up to spare-1 others
                v = self.colsum[:k, t:, None] + top[None, t:, :spare]
                company[t:] = (v / (self.size[:k, None, None] + self.index[:spare])).max(axis=(0, 2))
            if k < x and spare >= 1:  # open a new group that others join: mean at most the top affinity
                np.maximum(company[t:], top[t:, 1], out=company[t:])
            if k == x:  # must join: never alone, and takes one of the 2 * spare places
                total += float(company[t:].sum())
                alone[t:], company[t:] = 0.0, 0.0
                slots -= n - t
        gain = np.maximum(company - alone, 0.0)
        if slots < n:
            gain = np.partition(gain, n - slots)[n - slots:] if slots > 0 else gain[:0]
        return total + float(alone.sum() + gain.sum())

    def _place(self, t: int, g: int, sign: int) -> None:
        self.colsum[g] += sign * self.a[t]
        self.size[g] += sign
        self.assign[t] = g if sign > 0 else -1

    def run(self, t: int, k: int, ub: float) -> None:
        if t == self.n:
            if ub > self.best_sum:
                self.best_sum, self.best_assign = ub, self.assign.copy()
            return
        self.nodes += 1
        if self.aborted or time.perf_counter() > self.deadline:
            self.aborted = True
            self.open_bound = max(self.open_bound, ub)
            return
        spare = (self.n - t) - (self.x - k)
        options = list(range(k)) if spare >= 1 else []
        if k < self.x:
            options.append(k)
        children = []
        for g in options:
            self._place(t, g, 1)
            children.append((self.bound(t + 1, max(k, g + 1)), g))
            self._place(t, g, -1)
        children.sort(key=lambda c: -c[0])
        for cb, g in children:
            if cb <= self.best_sum:
                break
            self._place(t, g, 1)
            self.run(t + 1, max(k, g + 1), cb)
            self._place(t, g, -1)


def branch_and_bound(a: np.ndarray, x: int, *, time_limit: float = 10.0, seed: int = 0,
                     restarts: int = 32) -> SplitResult:
    """Best partition into exactly x groups; `optimal` only when the search space was exhausted."""
    a = as_affinity(a)
    n = a.shape[0]
    start = local_search(a, x, np.random.default_rng(seed), restarts)
    order = _link_order(a)
    search = _Search(a[np.ix_(order, order)], x, time.perf_counter() + time_limit)
    search.best_assign = start[order]
    search.best_sum = partition_score(a, _groups(start, x)) * n
    search.run(0, 0, search.bound(0, 0))
    assign = np.empty(n, dtype=np.int64)
    assign[order] = search.best_assign
    groups = _groups(assign, x)
    score = partition_score(a, groups)
    if search.aborted:
        return SplitResult(canonical(groups), score, False, max(score, search.open_bound / n))
    return SplitResult(canonical(groups), score, True)


def _groups(assign: np.ndarray, x: int) -> list[tuple[int, ...]]:
    return [tuple(int(i) for i in np.flatnonzero(assign == g)) for g in range(x)]
