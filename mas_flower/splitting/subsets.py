"""Vectorised dynamic programmes over subsets of a few dozen tasks (bit i of a mask = task i).

`best_partition` splits the task set into k blocks maximising the sum of a block value given for
every subset. Each DP level is a max-plus subset convolution, O(3^n): the (block, rest) pairs are
laid out as a ternary array, one axis per task (0 = outside, 1 = in the rest, 2 = in the block),
and maximised axis by axis, which is exactly "max over the pairs with the same union". Blocks too
big for memory recurse on their most significant task.
"""

from __future__ import annotations

from functools import cache

import numpy as np

#: Largest ternary block evaluated at once (3^13 floats = 13 MB); larger ones recurse on a task.
BASE_BITS = 13


def popcounts(n: int) -> np.ndarray:
    pc = np.zeros(1, dtype=np.int64)
    for _ in range(n):
        pc = np.concatenate([pc, pc + 1])
    return pc


def subset_sums(w: np.ndarray) -> np.ndarray:
    """s[m] = sum of w[i] over the bits i of m, for all 2^len(w) masks."""
    s = np.zeros(1)
    for x in w:
        s = np.concatenate([s, s + x])
    return s


def pair_sums(b: np.ndarray) -> np.ndarray:
    """W[S] = sum over unordered pairs {i, j} ⊆ S of b[i, j], for all 2^n subsets."""
    w = np.zeros(1)
    for top in range(b.shape[0]):
        w = np.concatenate([w, w + subset_sums(b[:top, top])])
    return w


@cache
def ternary_index(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the tasks in state 2 and in state 1 for each of the 3^m ternary states (C order,
    axis 0 = task m-1, the most significant bit). Treat the results as read-only."""
    two = np.zeros(1, dtype=np.int64)
    one = np.zeros(1, dtype=np.int64)
    for bit in range(m):  # each new, more significant bit becomes the new leading axis
        w = 1 << bit
        two = np.concatenate([two, two, two + w])
        one = np.concatenate([one, one + w, one])
    return two, one


def reduce_ternary(s: np.ndarray, m: int, merge: tuple[int, int]) -> np.ndarray:
    """Max over a ternary array with the two states `merge` identified: a (3,)*m array becomes a
    2^m array indexed by (state in merge -> bit 0, the other state -> bit 1) per task."""
    keep = ({0, 1, 2} - set(merge)).pop()
    first, second = (merge, keep) if keep == 2 else (keep, merge)
    for axis in range(m):  # axes before `axis` are already reduced to 2 states
        s = s.reshape(1 << axis, 3, -1)
        red = np.empty((s.shape[0], 2, s.shape[2]))
        for out, states in enumerate((first, second)):
            if isinstance(states, tuple):
                np.maximum(s[:, states[0]], s[:, states[1]], out=red[:, out])
            else:
                red[:, out] = s[:, states]
        s = red
    return s.reshape(-1)


def maxplus(vs: np.ndarray, fs: np.ndarray, m: int) -> np.ndarray:
    """r[M] = max over T ⊆ M of vs[T] + fs[M \\ T], for all masks M over m tasks."""
    if m > BASE_BITS:  # split on the most significant task: outside M, in T, or in the rest
        h = 1 << (m - 1)
        out = maxplus(vs[:h], fs[:h], m - 1)
        inside = np.maximum(maxplus(vs[h:], fs[:h], m - 1), maxplus(vs[:h], fs[h:], m - 1))
        return np.concatenate([out, inside])
    t, r = ternary_index(m)
    return reduce_ternary(vs[t] + fs[r], m, (1, 2))


def _next_level(v: np.ndarray, f_prev: np.ndarray, n: int) -> np.ndarray:
    """f[M] = max over T ⊆ M containing M's lowest task of v[T] + f_prev[M \\ T]."""
    f = np.full(1 << n, -np.inf)
    for low in range(n):
        m = n - 1 - low
        hi = np.arange(1 << m, dtype=np.int64) << (low + 1)
        f[hi + (1 << low)] = maxplus(v[hi + (1 << low)], f_prev[hi], m)
    return f


def _best_first_block(v: np.ndarray, f_prev: np.ndarray, mask: int) -> tuple[int, float]:
    """The block T containing mask's lowest task that maximises v[T] + f_prev[mask \\ T]."""
    bits = [b for b in range(mask.bit_length()) if mask >> b & 1]
    subs = subset_sums(np.array([1 << b for b in bits[1:]], dtype=float)).astype(np.int64) + (1 << bits[0])
    vals = v[subs] + f_prev[mask ^ subs]
    k = int(np.argmax(vals))
    return int(subs[k]), float(vals[k])


def best_partition(v: np.ndarray, n: int, k: int, at_most: bool = False) -> tuple[list[int], float]:
    """Partition of n tasks into exactly k (or, with at_most, 1..k) non-empty blocks maximising the
    sum of v[block]; v has 2^n entries, v[0] unused. Returns the block masks and the sum.

    Task 0's block is chosen last, over all blocks containing it, so the DP levels are needed only
    on subsets of the other n - 1 tasks: (k - 2) convolutions of 3^(n-1) / 2 pairs each.
    """
    full = (1 << (n - 1)) - 1
    rest_v = v[0::2]  # rest_v[m] = v[m << 1]: subsets of tasks 1..n-1, bit i-1 = task i
    levels = [rest_v]  # levels[j - 1][M] = best sum over M split into exactly j blocks
    for _ in range(k - 2):
        levels.append(_next_level(rest_v, levels[-1], n - 1))
    others = np.arange(full + 1)  # task 0's block is 1 + 2 * others
    options = []  # (total, number of blocks, others in task 0's block)
    for count in (range(1, k + 1) if at_most else [k]):
        if count == 1:
            options.append((float(v[-1]), 1, full))
        else:
            vals = v[1 + 2 * others] + levels[count - 2][full ^ others]
            best = int(np.argmax(vals))
            options.append((float(vals[best]), count, best))
    total, count, first = max(options, key=lambda o: (o[0], -o[1]))  # fewest blocks on ties
    blocks, mask = [1 + 2 * first], full ^ first
    for j in range(count - 1, 1, -1):
        t, _ = _best_first_block(rest_v, levels[j - 2], mask)
        blocks.append(t << 1)
        mask ^= t
    if count > 1:
        blocks.append(mask << 1)
    return blocks, total
