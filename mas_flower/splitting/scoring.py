"""Scores shared by the grouping methods (docs/design.md, section "Choosing the groups") and the common result type.

A is the affinity matrix with A[i, j] = Z[i -> j] (task i's update helps task j); its diagonal is
never used. Everything here is the *definition* the searches in `mas.py`, `tag.py` and `hoa.py`
optimise, written plainly so that tests can score any answer independently of the search.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

Group = tuple[int, ...]


@dataclass(frozen=True)
class SplitResult:
    """Chosen groups (task indices, each sorted; groups sorted), their score and whether the search
    proved the score optimal. `upper_bound` is a proven bound on the best score when the search
    stopped early (None when optimal or unknown); for HOA, "score" is the estimated total loss
    (lower is better) and the bound is a lower bound."""

    groups: list[Group]
    score: float
    optimal: bool
    upper_bound: float | None = None

    def labels(self, tasks: str | Sequence[str]) -> list[str] | list[list[str]]:
        """The groups as task strings ("sdn") for a letter string, or as lists of names."""
        return render_groups(self.groups, tasks)


def canonical(groups: Iterable[Iterable[int]]) -> list[Group]:
    """Groups as sorted tuples in sorted order, so that equal answers compare and print equally."""
    return sorted(tuple(sorted(int(t) for t in g)) for g in groups)


def render_groups(groups: Iterable[Iterable[int]], tasks: str | Sequence[str]) -> list[str] | list[list[str]]:
    """Render index groups in task order: ["sdn", "kt"] for a letter string, else lists of names."""
    groups = canonical(groups)
    if isinstance(tasks, str):
        return ["".join(tasks[i] for i in g) for g in groups]
    return [[tasks[i] for i in g] for g in groups]


def as_affinity(matrix: object) -> np.ndarray:
    """A float copy of a square, finite matrix with a zero diagonal (the diagonal is never used)."""
    a = np.array(matrix, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"affinity matrix must be square and non-empty, got shape {a.shape}")
    if not np.isfinite(a).all():
        i, j = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"affinity matrix has a non-finite entry at [{i}][{j}]: {a[i, j]}")
    np.fill_diagonal(a, 0.0)
    return a


def singleton_scores(a: np.ndarray) -> np.ndarray:
    """Score of each task alone: the mean of its off-diagonal affinities given and received, so that a
    task joins a group only when the group helps it more than its average. 0 when n == 1."""
    n = a.shape[0]
    if n == 1:
        return np.zeros(1)
    return (a.sum(axis=0) + a.sum(axis=1) - 2 * np.diag(a)) / (2 * (n - 1))


def task_scores(a: np.ndarray, group: Iterable[int]) -> dict[int, float]:
    """Score of each member j of a group of size >= 2: mean of A[i, j] over the other members i."""
    g = sorted(set(int(t) for t in group))
    if len(g) < 2:
        raise ValueError(f"task_scores needs a group of at least 2 tasks, got {g}")
    sums = a[np.ix_(g, g)].sum(axis=0) - np.diag(a)[g]  # column j: A[i, j] over members i != j
    return {j: float(s) / (len(g) - 1) for j, s in zip(g, sums, strict=True)}


def _check_groups(n: int, groups: Sequence[Iterable[int]]) -> list[Group]:
    out = canonical(groups)
    for g in out:
        if not g or g[0] < 0 or g[-1] >= n or len(set(g)) != len(g):
            raise ValueError(f"invalid group {g} for {n} tasks")
    return out


def partition_score(a: np.ndarray, groups: Sequence[Iterable[int]]) -> float:
    """MAS score of a partition: mean over tasks of their score (singleton rule for groups of one)."""
    n = a.shape[0]
    gs = _check_groups(n, groups)
    if sorted(t for g in gs for t in g) != list(range(n)):
        raise ValueError(f"groups {gs} are not a partition of {n} tasks")
    single = singleton_scores(a)
    total = 0.0
    for g in gs:
        total += float(single[g[0]]) if len(g) == 1 else sum(task_scores(a, g).values())
    return total / n


def best_scores(scores: Sequence[dict[int, float]], n: int, maximise: bool = True) -> np.ndarray:
    """Each task's best score over the groups that contain it; raises if some task is uncovered."""
    best = np.full(n, np.nan)
    for s in scores:
        for j, v in s.items():
            if np.isnan(best[j]) or (v > best[j] if maximise else v < best[j]):
                best[j] = v
    if np.isnan(best).any():
        raise ValueError(f"groups do not cover tasks {np.flatnonzero(np.isnan(best)).tolist()}")
    return best


def cover_score(a: np.ndarray, groups: Sequence[Iterable[int]]) -> float:
    """TAG score of overlapping groups (each of size >= 2, together covering every task): mean over
    tasks of each task's best score among the groups containing it."""
    n = a.shape[0]
    gs = _check_groups(n, groups)
    if any(len(g) < 2 for g in gs):
        raise ValueError(f"TAG groups need at least 2 tasks each, got {gs}")
    return float(best_scores([task_scores(a, g) for g in gs], n).mean())
