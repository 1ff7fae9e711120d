"""Building names: the paper's 32 Taskonomy buildings (supplementary, footnote 2), in its order."""

from __future__ import annotations

BUILDING_NAMES: tuple[str, ...] = (
    "allensville", "beechwood", "benevolence", "coffeen", "collierville", "corozal", "cosmos", "darden",
    "forkland", "hanson", "hiteman", "ihlen", "klickitat", "lakeville", "leonardo", "lindenwood",
    "markleeville", "marstons", "mcdade", "merom", "mifflinburg", "mulshoe", "newfields", "noxapater",
    "onaga", "pinesdale", "pomaria", "ranchester", "shelbyville", "stockman", "tolstoy", "uvalda",
)


def building_names(n: int) -> list[str]:
    """The first n building names; past 32 the list repeats with suffixes (allensville2, ..., uvalda2, ...3)."""
    if n < 0:
        raise ValueError(f"number of buildings must be >= 0, got {n}")
    base = len(BUILDING_NAMES)
    return [BUILDING_NAMES[i % base] + (str(i // base + 1) if i >= base else "") for i in range(n)]
