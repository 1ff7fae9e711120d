"""How much to trust an averaged affinity: its standard error, and how stable MAS's split is under it.

The server averages the clients' lookahead affinities (docs/design.md, section "Lookahead affinity"):
in affinity round r, A_r = Σ_c n_c Z_c / Σ_c n_c over the clients c that measured (n_c lookahead
batches, Z_c their mean matrix); then A = (1/R) Σ_r A_r over the R affinity rounds. Each client also reports S_c, the
per-entry sum of squares of its batches' matrices, so the server knows the spread of the single
lookahead batches without seeing any of them.

- `standard_error`: treating the N_r = Σ_c n_c lookahead batches of round r as independent draws,
  Var(A_r) = s_r² / N_r with s_r² = (Σ_c S_c − N_r·A_r²) / (N_r − 1) (the sample variance of round
  r's batches), and Var(A) = Σ_r Var(A_r) / R². Batches of one client share weights and data, so this
  is a lower bound on the true uncertainty; `split_stability` resamples whole clients instead.
- `split_stability`: the fraction of bootstrap resamples (clients drawn with replacement within each
  round, every round's mean recomputed, then the mean over rounds) whose MAS split equals the split
  of A. 1.0: every plausible affinity gives the same groups; near 1/S(n, x): the split is noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mas_flower.splitting.mas import mas_split


@dataclass(frozen=True)
class AffinityReport:
    """One client's lookahead affinity in one round: n_c batches, their mean Z_c and sum of squares S_c
    (n × n each; S_c None when the client did not report it)."""

    count: int
    mean: np.ndarray
    squares: np.ndarray | None = None


def round_mean(reports: Sequence[AffinityReport]) -> np.ndarray:
    """A_r = Σ_c n_c Z_c / Σ_c n_c. Raises ValueError when no report has a lookahead batch."""
    total = sum(r.count for r in reports)
    if total <= 0:
        raise ValueError("no client reported a lookahead batch in this round")
    return sum(r.count * np.asarray(r.mean, dtype=float) for r in reports) / total


def standard_error(rounds: Sequence[Sequence[AffinityReport]]) -> np.ndarray | None:
    """Per-entry standard error of A = mean over rounds of A_r (module docstring), or None when some
    report lacks its sum of squares or a round has fewer than 2 lookahead batches."""
    if not rounds:
        return None
    variance = None
    for reports in rounds:
        n = sum(r.count for r in reports)
        if n < 2 or any(r.squares is None for r in reports if r.count > 0):
            return None
        mean = round_mean(reports)
        squares = sum(np.asarray(r.squares, dtype=float) for r in reports if r.count > 0)
        sample_var = np.maximum(squares - n * mean * mean, 0.0) / (n - 1)
        term = sample_var / n
        variance = term if variance is None else variance + term
    return np.sqrt(variance) / len(rounds)


def bootstrap_affinity(rounds: Sequence[Sequence[AffinityReport]], rng: np.random.Generator) -> np.ndarray:
    """One bootstrap draw of A: each round's clients resampled with replacement, then the mean over rounds
    (a draw whose clients have no lookahead batch at all is drawn again)."""
    means = []
    for reports in rounds:
        if sum(r.count for r in reports) <= 0:
            raise ValueError("a round without any lookahead batch cannot be resampled")
        while True:
            picked = [reports[i] for i in rng.integers(0, len(reports), size=len(reports))]
            if sum(r.count for r in picked) > 0:
                break
        means.append(round_mean(picked))
    return np.mean(means, axis=0)


def split_stability(rounds: Sequence[Sequence[AffinityReport]], splits: int, *, resamples: int = 200,
                    seed: int = 0) -> float:
    """Fraction of `resamples` bootstrap draws of A (`bootstrap_affinity`) whose `mas_split` into
    `splits` groups equals that of the full A. Raises ValueError for no rounds or resamples < 1."""
    if not rounds or resamples < 1:
        raise ValueError(f"split_stability needs affinity rounds and resamples >= 1, got {len(rounds)} "
                         f"round(s) and {resamples}")
    full = np.mean([round_mean(r) for r in rounds], axis=0)
    want = mas_split(full, splits).groups
    rng = np.random.default_rng(seed)
    same = sum(mas_split(bootstrap_affinity(rounds, rng), splits).groups == want for _ in range(resamples))
    return same / resamples


@dataclass(frozen=True)
class PartitionEffect:
    """Two-way analysis of variance of partition losses, seeds × partitions, one run per cell.

    `f` = MS_partition / MS_residual with `df_partition` = P − 1 and `df_residual` = (S − 1)(P − 1):
    near 1 (or below the F table's 5 % value) the partitions' losses differ no more than a re-run of the
    same partition does, so no split choice, however good, can be told from a random one with these seeds.
    `effect_sd`: the standard deviation over partitions of their seed-centred mean loss; `noise_sd`: the
    residual standard deviation of a single run.
    """

    f: float
    df_partition: int
    df_residual: int
    effect_sd: float
    noise_sd: float
    p_value: float


def partition_effect(losses: np.ndarray, *, permutations: int = 2000, seed: int = 0) -> PartitionEffect:
    """The seed-adjusted partition effect of `losses` (S seeds × P partitions, the same partition order in
    every row). The model is loss = seed + partition + noise (Montgomery, Design and Analysis of
    Experiments, two-factor design without replication). `p_value`: the share of `permutations` draws,
    each shuffling the partitions within every seed independently, whose F is at least the observed one
    (a permutation test: no F table needed). Raises ValueError for S < 2 or P < 2 or a non-finite loss."""
    loss = np.asarray(losses, dtype=float)
    if loss.ndim != 2 or loss.shape[0] < 2 or loss.shape[1] < 2:
        raise ValueError(f"partition_effect needs at least 2 seeds × 2 partitions, got shape {loss.shape}")
    if not np.isfinite(loss).all():
        raise ValueError("partition_effect: a loss is not finite")
    seeds, parts = loss.shape
    f, effect, ms_r = _anova(loss)
    rng = np.random.default_rng(seed)
    shuffled = (_anova(rng.permuted(loss, axis=1))[0] for _ in range(permutations))
    p_value = sum(g >= f - 1e-12 for g in shuffled) / permutations if permutations > 0 else math.nan
    return PartitionEffect(f=f, df_partition=parts - 1, df_residual=(seeds - 1) * (parts - 1),
                           effect_sd=float(effect.std(ddof=1)), noise_sd=math.sqrt(ms_r), p_value=p_value)


def _anova(loss: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(F, the partitions' seed-centred mean losses, the residual mean square) of a seeds × partitions table."""
    seeds, parts = loss.shape
    centred = loss - loss.mean(axis=1, keepdims=True)
    effect = centred.mean(axis=0)
    residual = centred - effect
    ms_p = seeds * float((effect ** 2).sum()) / (parts - 1)
    ms_r = float((residual ** 2).sum()) / ((seeds - 1) * (parts - 1))
    return (ms_p / ms_r if ms_r > 0 else math.inf), effect, ms_r
