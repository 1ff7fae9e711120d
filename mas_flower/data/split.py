"""Deterministic train/val/test split of one building, by camera point.

Views of one point look at the same spot from different angles, so splitting views independently
would leak near-duplicate images between train and test; whole points go to one split. The order
comes from a hash of the building name (not Python's salted hash()), so every process agrees.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


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


def split_points(building: str, points: list[int], fractions: tuple[float, float, float]) -> dict[str, set[int]]:
    """Assign each point of a building to train/val/test."""
    unique = sorted(set(points))
    seed = int.from_bytes(hashlib.sha256(building.encode()).digest()[:8], "little")
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    counts = split_counts(len(unique), fractions)
    out: dict[str, set[int]] = {}
    start = 0
    for name, count in zip(SPLIT_NAMES, counts, strict=True):
        out[name] = set(shuffled[start : start + count])
        start += count
    return out
