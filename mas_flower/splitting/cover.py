"""Choose up to x overlapping groups covering every task, each task served by its best group.

Shared by TAG (score = affinity onto the task, maximised) and HOA (score = minus the estimated loss).
The objective F(S) = sum over tasks of the best value among the chosen groups is a facility-location
function: monotone and submodular, so adding r more groups gains at most the sum of the r largest
single-group gains. That, and "each task at most its best remaining value", bound a binary branch
and bound (take / drop the candidate with the largest gain). Until a task is covered it counts its
worst candidate value, which keeps the gains finite and the bound valid for covering sets.
"""

from __future__ import annotations

import time

import numpy as np


def select_cover(values: np.ndarray, x: int, *, time_limit: float = 10.0
                 ) -> tuple[list[int], float, bool, float]:
    """Rows of `values` (candidates x tasks, -inf where the task is not in the candidate) to choose.

    Returns (chosen rows, best total, proven optimal, upper bound on the best total). Raises if no
    x candidates cover every task.
    """
    c, n = values.shape
    member = np.isfinite(values)
    worst = np.where(member, values, np.inf).min(axis=0)
    if not np.isfinite(worst).all():
        raise ValueError(f"tasks {np.flatnonzero(~np.isfinite(worst)).tolist()} are in no candidate group")
    deadline = time.perf_counter() + time_limit
    best_total, best_set = -np.inf, None
    # A node: best value so far per task, covered tasks, chosen rows, dropped rows (a parent's mask
    # plus one more row, copied only when the node is expanded), groups left, the parent's bound.
    stack = [(worst.copy(), np.zeros(n, dtype=bool), [], np.zeros(c, dtype=bool), -1, x, np.inf)]
    open_bound, aborted = -np.inf, False
    while stack:
        cur, covered, chosen, dropped, also, left, parent_bound = stack.pop()
        if covered.all() and cur.sum() > best_total:
            best_total, best_set = float(cur.sum()), chosen
        if left == 0:
            continue
        if aborted or time.perf_counter() > deadline:
            aborted = True
            open_bound = max(open_bound, parent_bound)
            continue
        if also >= 0:
            dropped = dropped.copy()
            dropped[also] = True
        avail = np.flatnonzero(~dropped)
        if avail.size == 0 or not member[avail][:, ~covered].any(axis=0).all():
            continue  # some uncovered task is in no remaining candidate
        vals = values[avail]
        gains = np.maximum(vals - cur, 0).sum(axis=1)
        top = -np.sort(-gains)[:left]
        bound = min(cur.sum() + top.sum(), np.maximum(cur, vals.max(axis=0)).sum())
        if bound <= best_total or (top[0] <= 0 and covered.all()):
            continue
        if top[0] > 0:
            pick = int(avail[np.argmax(gains)])
        else:  # nothing gains but tasks are uncovered: take the row covering most of them
            pick = int(avail[np.argmax(member[avail][:, ~covered].sum(axis=1))])
        stack.append((cur, covered, chosen, dropped, pick, left, bound))
        # a chosen row never gains again, so the take branch need not drop it
        stack.append((np.maximum(cur, values[pick]), covered | member[pick], [*chosen, pick], dropped, -1,
                      left - 1, bound))
    if best_set is None:
        if aborted:
            raise ValueError(f"no covering choice of {x} groups found within {time_limit} s")
        raise ValueError(f"no choice of {x} candidate groups covers every task")
    return best_set, best_total, not aborted, max(best_total, open_bound)


def drop_redundant(values: np.ndarray, chosen: list[int]) -> list[int]:
    """Keep only chosen rows that are some task's best (first on ties): the others serve nobody."""
    sub = values[chosen]
    keep = sorted(set(np.argmax(np.where(np.isfinite(sub), sub, -np.inf), axis=0).tolist()))
    return [chosen[i] for i in keep]
