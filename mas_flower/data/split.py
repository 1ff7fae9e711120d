"""Deterministic train/val/test split of one building, by camera point.

Views of one point look at the same spot from different angles, so splitting views independently
would leak near-duplicate images between train and test; whole points go to one split. The order
comes from a hash of the building's folder name (not Python's salted hash(), and without an Omnidata
component prefix such as `taskonomy/`), so every process agrees and a building keeps its split
whichever layout it is stored in.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from mas_flower.data.layout import DataError

SPLIT_NAMES = ("train", "val", "test")
#: (train, val, test) fractions of a building's camera points; the app's split.
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def check_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers (train, val, test) summing to 1, "
                         f"got {fractions!r}")
    return fr  # type: ignore[return-value]


def split_counts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """How many of n points each split gets: largest-remainder rounding (counts sum to n exactly), then
    every split with a positive fraction gets at least one point when there are enough points."""
    fr = check_fractions(fractions)
    exact = [f * n for f in fr]
    counts = [math.floor(x + 1e-9) for x in exact]
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i in range(3) if fr[i] > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(3), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return counts


def empty_split_problem(building: str, points: list[int], fractions: tuple[float, float, float]) -> str | None:
    """Why a building cannot be split (a split with a positive fraction would get no point), or None."""
    fr = check_fractions(fractions)
    n = len(set(points))
    counts = split_counts(n, fr)
    empty = [name for name, f, c in zip(SPLIT_NAMES, fr, counts, strict=True) if f > 0 and c == 0]
    if not empty:
        return None
    return (f"building {building!r} has {n} camera point{'s' * (n != 1)}, too few for the (train, val, test) "
            f"fractions {fr}: its {' and '.join(empty)} split{'s' * (len(empty) > 1)} would be empty (whole points "
            f"go to one split, so it needs at least {sum(f > 0 for f in fr)} points)")


def split_points(building: str, points: list[int], fractions: tuple[float, float, float]) -> dict[str, set[int]]:
    """Assign each point of a building to train/val/test.

    Raises DataError naming the building when a split with a positive fraction would be empty.
    """
    problem = empty_split_problem(building, points, fractions)
    if problem is not None:
        raise DataError(problem)
    return _assign(building, points, fractions)


def _assign(building: str, points: list[int], fractions: tuple[float, float, float]) -> dict[str, set[int]]:
    unique = sorted(set(points))
    seed = int.from_bytes(hashlib.sha256(building.rsplit("/", 1)[-1].encode()).digest()[:8], "little")
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    counts = split_counts(len(unique), fractions)
    out: dict[str, set[int]] = {}
    start = 0
    for name, count in zip(SPLIT_NAMES, counts, strict=True):
        out[name] = set(shuffled[start : start + count])
        start += count
    return out


def split_sizes(building: str, keys: list[tuple[int, int]], fractions: tuple[float, float, float]
                ) -> dict[str, int]:
    """Views per split of a building's (point, view) keys (zero where `split_points` would refuse)."""
    points = [p for p, _ in keys]
    assigned = _assign(building, points, fractions)
    return {name: sum(p in assigned[name] for p in points) for name in SPLIT_NAMES}
