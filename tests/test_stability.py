"""The affinity's evidence (mas_flower.splitting.stability) on hand-computed inputs: count-weighted round
means of asymmetric matrices, the standard error rebuilt from explicit lookahead batches, and the
stability of MAS's split under a client bootstrap (clear structure, contradicting clients, a 3/4 case)."""

from __future__ import annotations

import numpy as np
import pytest

from mas_flower.splitting import mas_split
from mas_flower.splitting.stability import (
    AffinityReport,
    bootstrap_affinity,
    partition_effect,
    round_mean,
    split_stability,
    standard_error,
)


def report(batches: list[np.ndarray]) -> AffinityReport:
    """What a client sends for these lookahead batches: their count, mean and per-entry sum of squares."""
    z = np.asarray(batches, dtype=float)
    return AffinityReport(count=len(z), mean=z.mean(axis=0), squares=(z * z).sum(axis=0))


# ---------------------------------------------------------------------------------------------- round_mean

Z1 = np.array([[0.0, 2.0, -1.0], [4.0, 0.0, 1.0], [0.0, 3.0, 0.0]])  # A[i→j], row i column j
Z2 = np.array([[0.0, -2.0, 3.0], [0.0, 0.0, 5.0], [8.0, -1.0, 0.0]])


def test_round_mean_weights_each_client_by_its_lookahead_batches() -> None:
    # (3·Z1 + 1·Z2) / 4: [0][1] (6 − 2)/4 = 1; [0][2] (−3 + 3)/4 = 0; [1][0] (12 + 0)/4 = 3;
    # [1][2] (3 + 5)/4 = 2; [2][0] (0 + 8)/4 = 2; [2][1] (9 − 1)/4 = 2.
    # Unweighted (Z1 + Z2)/2 would give [0][1] = 0, [1][0] = 2, [2][0] = 4; the transpose [0][1] = 3.
    got = round_mean([AffinityReport(3, Z1), AffinityReport(1, Z2)])
    np.testing.assert_allclose(got, [[0.0, 1.0, 0.0], [3.0, 0.0, 2.0], [2.0, 2.0, 0.0]])


def test_round_mean_ignores_clients_without_batches_and_refuses_an_empty_round() -> None:
    wild = np.full((3, 3), 1e6)
    np.testing.assert_allclose(round_mean([AffinityReport(0, wild), AffinityReport(2, Z2)]), Z2)
    with pytest.raises(ValueError, match="no client"):
        round_mean([AffinityReport(0, wild)])
    with pytest.raises(ValueError):
        round_mean([])


# ------------------------------------------------------------------------------------------ standard_error

# Round 1: client A's batches z1, z2, z3; client B's z4 (N_1 = 4). Round 2: client C's w1, w2; client D's
# w3 (N_2 = 3). 2 × 2, asymmetric: [0][1] ≠ [1][0] in every batch where it matters.
ROUND_1 = {"A": [[[-1, 1], [0, 0]], [[1, 2], [0, 0]], [[-1, 3], [0, 0]]], "B": [[[1, 6], [4, 0]]]}
ROUND_2 = {"C": [[[2, 0], [1, 0]], [[2, 2], [1, 0]]], "D": [[[2, 4], [4, 0]]]}


def rounds_of_reports() -> list[list[AffinityReport]]:
    return [[report(np.array(b, dtype=float)) for b in r.values()] for r in (ROUND_1, ROUND_2)]


def test_standard_error_from_counts_means_and_squares_equals_the_batches_own() -> None:
    # Per entry and round: s_r² (ddof 1) of the round's batches / N_r, summed over rounds, sqrt, / R = 2.
    # [0][1]: round 1 values 1, 2, 3, 6: mean 3, squared deviations 4+1+0+9 = 14, s² = 14/3, / 4 = 7/6;
    #         round 2 values 0, 2, 4: mean 2, 4+0+4 = 8, s² = 4, / 3 = 4/3. √(7/6 + 4/3) / 2 = √2.5 / 2.
    # [1][0]: round 1 values 0, 0, 0, 4: mean 1, 1+1+1+9 = 12, s² = 4, / 4 = 1;
    #         round 2 values 1, 1, 4: mean 2, 1+1+4 = 6, s² = 3, / 3 = 1. √2 / 2.
    # [0][0]: round 1 values −1, 1, −1, 1: mean 0, 4, s² = 4/3, / 4 = 1/3; round 2 2, 2, 2: 0. √(1/3) / 2.
    # [1][1]: always 0.
    want = np.array([[np.sqrt(1 / 3) / 2, np.sqrt(2.5) / 2], [np.sqrt(2.0) / 2, 0.0]])
    # ddof 0 would give [0][1] √(14/16 + 8/9) / 2; dividing by R² = 4 half of these; pooling both rounds'
    # 7 batches or weighting clients equally other values again.
    got = standard_error(rounds_of_reports())
    np.testing.assert_allclose(got, want, atol=1e-12)

    # The same from the raw batches with numpy, independently of the reports.
    per_round = []
    for r in (ROUND_1, ROUND_2):
        batches = np.array([b for client in r.values() for b in client], dtype=float)
        per_round.append(batches.var(axis=0, ddof=1) / len(batches))
    np.testing.assert_allclose(got, np.sqrt(np.sum(per_round, axis=0)) / 2, atol=1e-12)


def test_standard_error_of_one_round_is_that_rounds_own() -> None:
    # Round 1 alone, R = 1: [0][1] √(7/6), [1][0] 1, [0][0] √(1/3).
    got = standard_error(rounds_of_reports()[:1])
    np.testing.assert_allclose(got, [[np.sqrt(1 / 3), np.sqrt(7 / 6)], [1.0, 0.0]], atol=1e-12)


def test_standard_error_is_unknown_without_squares_or_with_a_single_batch() -> None:
    r1, r2 = rounds_of_reports()
    no_squares = AffinityReport(r2[1].count, r2[1].mean)
    assert standard_error([r1, [r2[0], no_squares]]) is None
    assert standard_error([r1, [report(np.array(ROUND_2["D"], dtype=float))]]) is None  # N_2 = 1
    assert standard_error([]) is None
    # A client that measured nothing and sent no squares does not spoil the round.
    idle = AffinityReport(0, np.zeros((2, 2)))
    np.testing.assert_allclose(standard_error([r1 + [idle], r2]), standard_error([r1, r2]), atol=1e-15)


# ---------------------------------------------------------------------------------- bootstrap and stability

def test_bootstrap_of_one_client_per_round_is_the_mean_over_rounds() -> None:
    rounds = [[AffinityReport(3, Z1)], [AffinityReport(1, Z2)]]
    # Rounds count equally whatever their batches: (Z1 + Z2) / 2, not (3·Z1 + Z2) / 4.
    want = (Z1 + Z2) / 2
    rng = np.random.default_rng(5)
    for _ in range(3):
        np.testing.assert_allclose(bootstrap_affinity(rounds, rng), want)


def test_bootstrap_redraws_a_round_whose_clients_measured_nothing() -> None:
    # Drawing the idle client twice has no batch: it is drawn again; every other draw has mean Z2.
    rounds = [[AffinityReport(0, np.full((3, 3), 1e6)), AffinityReport(2, Z2)]]
    rng = np.random.default_rng(0)
    for _ in range(20):
        np.testing.assert_allclose(bootstrap_affinity(rounds, rng), Z2)


def structured(pairs: list[tuple[int, int]], strength: float = 1.0) -> np.ndarray:
    """4 tasks: +strength between the tasks of each pair (both directions), −strength elsewhere."""
    a = np.full((4, 4), -strength)
    for i, j in pairs:
        a[i, j] = a[j, i] = strength
    np.fill_diagonal(a, 0.0)
    return a


FAVOUR_01_23 = structured([(0, 1), (2, 3)])
FAVOUR_02_13 = structured([(0, 2), (1, 3)])


def test_a_clear_structure_is_stable() -> None:
    rng = np.random.default_rng(7)
    rounds = [[AffinityReport(int(rng.integers(1, 5)), FAVOUR_01_23 + rng.normal(0, 0.05, (4, 4)))
               for _ in range(6)] for _ in range(2)]
    full = np.mean([round_mean(r) for r in rounds], axis=0)
    assert mas_split(full, 2).groups == [(0, 1), (2, 3)]
    assert split_stability(rounds, 2, resamples=50) == 1.0


def test_contradicting_clients_give_an_unstable_split() -> None:
    rng = np.random.default_rng(3)
    rounds = [[AffinityReport(2, m + rng.normal(0, 0.05, (4, 4)))
               for m in (FAVOUR_01_23, FAVOUR_02_13) * 3] for _ in range(2)]
    stability = split_stability(rounds, 2, resamples=200, seed=1)
    assert 0.0 < stability < 0.9
    assert split_stability(rounds, 2, resamples=200, seed=1) == stability  # same seed, same draws


def test_stability_of_two_clients_is_three_quarters() -> None:
    # One round, two clients: "a" favours {01, 23} with 3 batches, "b" favours {02, 13} with 1 batch,
    # so the full mean (3a + b)/4 favours {01, 23}. Draws: {a, a} (1/4) → {01, 23}; {b, b} (1/4) →
    # {02, 13}; {a, b} (1/2) → the full mean → {01, 23}. Stability 3/4 (standard deviation
    # √(3/16 / 2000) ≈ 0.01 over 2000 draws).
    rounds = [[AffinityReport(3, FAVOUR_01_23), AffinityReport(1, FAVOUR_02_13)]]
    assert mas_split(round_mean(rounds[0]), 2).groups == [(0, 1), (2, 3)]
    assert split_stability(rounds, 2, resamples=2000, seed=2) == pytest.approx(0.75, abs=0.05)
    # With a single resample the answer is 0 or 1.
    assert split_stability(rounds, 2, resamples=1, seed=2) in (0.0, 1.0)


def test_split_stability_refuses_no_rounds_or_no_resamples() -> None:
    rounds = [[AffinityReport(1, FAVOUR_01_23)]]
    with pytest.raises(ValueError, match="resamples"):
        split_stability([], 2)
    with pytest.raises(ValueError, match="resamples"):
        split_stability(rounds, 2, resamples=0)
    assert split_stability(rounds, 2, resamples=1) == 1.0


def test_partition_effect_by_hand() -> None:
    # seeds × partitions [[1, 2, 4], [2, 2, 5]]: row means 7/3 and 3; partition effects (-7/6, -2/3, 11/6);
    # residuals ±(1/6, -1/3, 1/6); MS_partition = 2 · (49 + 16 + 121)/36 / 2 = 31/6, MS_residual = (1/3) / 2.
    fx = partition_effect(np.array([[1.0, 2, 4], [2, 2, 5]]), permutations=3000)
    assert fx.f == pytest.approx(31.0)
    assert (fx.df_partition, fx.df_residual) == (2, 2)
    assert fx.effect_sd == pytest.approx(np.std([-7 / 6, -2 / 3, 11 / 6], ddof=1))
    assert fx.noise_sd == pytest.approx((1 / 6) ** 0.5)
    # F depends only on how the second row is aligned with the first: 2 of its 6 orders (the two 2s
    # swapped) give the observed F, none a larger one.
    assert fx.p_value == pytest.approx(1 / 3, abs=0.04)


def test_a_partition_effect_larger_than_rerun_noise_is_significant() -> None:
    rng = np.random.default_rng(0)
    effect = np.linspace(0.0, 0.14, 15)
    seeds = np.array([[0.0], [0.5], [-0.3]])  # whole runs shift by seed: removed before comparing
    strong = partition_effect(seeds + effect + rng.normal(0, 0.01, (3, 15)), permutations=500)
    # no effect at all: with this draw of re-run noise F is about 1 (a planted swap of the residual and
    # partition mean squares would give about 1 / F)
    none = partition_effect(seeds + np.random.default_rng(1).normal(0, 0.01, (3, 15)), permutations=500)
    assert strong.f > 20 and strong.p_value < 0.01
    assert 0.5 < none.f < 1.5 and none.p_value > 0.3


def test_partition_effect_refuses_a_single_seed_or_a_nan() -> None:
    with pytest.raises(ValueError, match="2 seeds"):
        partition_effect(np.array([[1.0, 2.0, 3.0]]))
    with pytest.raises(ValueError, match="not finite"):
        partition_effect(np.array([[1.0, np.nan], [1.0, 2.0]]))
