"""HOA's and the oracle's decisions on hand-written losses (no Flower): asymmetric pair losses, whose
transpose would choose other groups, and an oracle ranking with a tie."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from mas_flower.defaults import load_settings
from mas_flower.methods import StageOutcome, build_method
from mas_flower.methods.oracle import ranks, spearman
from mas_flower.splitting import partition_score


def settings(**overrides):
    return load_settings({}, {k.replace("_", "-"): v for k, v in overrides.items()})


#: Validation losses after HOA's pairs stage. Singles all differ; within each pair the two tasks differ.
VAL = {"s": {"s": 1.1}, "d": {"d": 0.9}, "k": {"k": 1.3},
       "sd": {"s": 0.4, "d": 1.6}, "sk": {"s": 1.5, "k": 0.8}, "dk": {"d": 0.6, "k": 0.8}}


@pytest.mark.parametrize("single_cost", [1.0, 0.5])
def test_hoa_reads_each_tasks_own_loss_from_its_pairs(single_cost: float) -> None:
    method = build_method(settings(method="hoa", task_set="sdk", splits=2, hoa_single_cost=single_cost))
    first = method.first_stage()
    second = method.next_stage(StageOutcome(first, {}, val_losses=VAL))
    # P[i][j] = loss of task j trained with task i: P[s][d] = sd's d = 1.6, P[d][s] = sd's s = 0.4, ...
    assert method.details["hoa_pair_val_loss"] == [[0.0, 1.6, 0.8], [0.4, 0.0, 0.8], [1.5, 0.6, 0.0]]
    assert method.details["hoa_single_val_loss"] == {"s": 1.1, "d": 0.9, "k": 1.3}
    # Each task's lowest loss anywhere: s 0.4 (only in sd), d 0.6 (only in dk), k 0.8 (sk, dk or the
    # trio's mean (0.8 + 0.8) / 2): {sd, dk} reaches all three, 0.4 + 0.6 + 0.8 = 1.8, within x = 2.
    # With each pair's two losses swapped (the transpose) the floor would be s 0.8 (sk), d 0.4 (sd),
    # k 0.6 (dk), out of reach of two groups: it would pick {sk, dk}, 0.8 + 0.8 + 0.6 = 2.2.
    assert sorted(method.splits) == ["dk", "sd"] and sorted(f.tasks for f in second.federations) == ["dk", "sd"]
    assert method.details["hoa_estimated_total"] == pytest.approx(1.8)


#: Test losses of every group the oracle trains for `sdk` at x = 2 (partitions s|dk, sd|k, sk|d).
TEST = {"s": {"s": 1.0}, "dk": {"d": 0.5, "k": 2.0}, "sd": {"s": 0.75, "d": 0.75}, "k": {"k": 1.5},
        "sk": {"s": 0.25, "k": 3.0}, "d": {"d": 0.4}}


def _oracle_after_the_merge():
    """An oracle for `sdk`, x = 2, whose affinity makes MAS pick {s}, {d, k} (d and k help each other)."""
    method = build_method(settings(method="oracle", task_set="sdk", splits=2, num_rounds=4, merge_rounds=2,
                                   affinity_rounds=1))
    first = method.first_stage()
    affinity = np.array([[0.0, -0.5, -0.4], [-0.3, 0.0, 0.9], [-0.2, 0.8, 0.0]])
    merged = {"encoder.w": torch.zeros(2), **{f"decoders.{t}.w": torch.zeros(1) for t in "sdk"}}
    stage = method.next_stage(StageOutcome(first, {"all": merged}, affinity={"all": affinity}))
    assert sorted(method.splits) == ["dk", "s"]
    assert sorted(f.tasks for f in stage.federations) == sorted(TEST)
    return method


def test_oracle_ranks_mas_partition_by_summed_test_losses() -> None:
    method = _oracle_after_the_merge()
    method.tested(TEST)
    # s|dk: 1.0 + 0.5 + 2.0 = 3.5; sd|k: 0.75 + 0.75 + 1.5 = 3.0; sk|d: 0.25 + 3.0 + 0.4 = 3.65
    d = method.details
    assert [(p["groups"], p["total_test_loss"]) for p in d["oracle_partitions"]] == [
        (["sd", "k"], 3.0), (["s", "dk"], 3.5), (["sk", "d"], pytest.approx(3.65))]
    assert d["oracle_mas_partition"] == ["s", "dk"] and d["oracle_mas_total_test_loss"] == 3.5
    assert d["oracle_mas_rank"] == 2 and d["oracle_partition_count"] == 3


def test_oracle_ties_share_the_better_rank() -> None:
    method = _oracle_after_the_merge()
    method.splits = ["dk", "s"]  # MAS's groups in another order: the same partition
    method.tested({**TEST, "d": {"d": 0.25}, "sd": {"s": 1.0, "d": 1.5}})
    # s|dk 3.5; sd|k 1.0 + 1.5 + 1.5 = 4.0; sk|d 0.25 + 3.0 + 0.25 = 3.5: MAS's ties for first
    assert method.details["oracle_mas_rank"] == 1 and method.details["oracle_mas_partition"] == ["s", "dk"]
    assert [p["total_test_loss"] for p in method.details["oracle_partitions"]] == [3.5, 3.5, 4.0]


def test_ranks_share_the_mean_rank_among_ties() -> None:
    np.testing.assert_array_equal(ranks([3, 1, 1, 2]), [4, 1.5, 1.5, 3])  # the 1s share ranks 1 and 2
    np.testing.assert_array_equal(ranks([2, 2, 2, 1, 5]), [3, 3, 3, 1, 5])  # ranks 2, 3, 4 → 3
    np.testing.assert_array_equal(ranks([0.5, -1.0]), [2, 1])
    assert len(ranks([])) == 0


def test_spearman_correlates_tie_averaged_ranks() -> None:
    assert spearman([1, 2, 3, 4], [10, 5, 1, -7]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 8, 27]) == pytest.approx(1.0)  # monotone, not linear: still 1
    # x = [1, 5, 5, 100] → ranks [1, 2.5, 2.5, 4]; y = [1, 3, 2, 4] → ranks [1, 3, 2, 4]. Deviations from
    # 2.5: [−1.5, 0, 0, 1.5] and [−1.5, 0.5, −0.5, 1.5]: Σ dx·dy = 4.5, Σ dx² = 4.5, Σ dy² = 5, so
    # ρ = 4.5 / √(4.5 · 5) = √0.9 ≈ 0.9487. (Ties ranked 2, 3 instead: 0.8; Pearson of raw x: ≈ 0.80.)
    assert spearman([1, 5, 5, 100], [1, 3, 2, 4]) == pytest.approx(np.sqrt(0.9))
    assert spearman([1, 5, 5, 100], [4, 2, 3, 1]) == pytest.approx(-np.sqrt(0.9))


def test_spearman_is_undefined_for_constant_or_short_input_and_refuses_unequal_lengths() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean NaN, not numpy's division by a zero deviation
        assert math.isnan(spearman([2, 2, 2], [1, 2, 3]))
        assert math.isnan(spearman([1, 2, 3], [7, 7, 7]))
    assert math.isnan(spearman([1], [2]))
    assert math.isnan(spearman([], []))
    with pytest.raises(ValueError, match="3 values against 2"):
        spearman([1, 2, 3], [1, 2])


#: Oracle affinity for s, d, k (index 0, 1, 2), asymmetric: A[i→j] ≠ A[j→i].
ORACLE_AFFINITY = np.array([[0.0, 0.6, -0.2], [0.2, 0.0, 0.4], [-0.6, 1.0, 0.0]])
# Singleton scores (column sum + row sum) / (2 (n − 1)): s (0.2 − 0.6 + 0.6 − 0.2) / 4 = 0,
# d (0.6 + 1.0 + 0.2 + 0.4) / 4 = 0.55, k (−0.2 + 0.4 − 0.6 + 1.0) / 4 = 0.15. A pair {i, j} scores
# A[i→j] + A[j→i]; the partition's score is the sum over the three tasks / 3.
ORACLE_SCORES = {("s", "dk"): (0.0 + 0.4 + 1.0) / 3,  # 0.4667
                 ("sd", "k"): (0.6 + 0.2 + 0.15) / 3,  # 0.3167
                 ("sk", "d"): (-0.2 - 0.6 + 0.55) / 3}  # −0.0833


@pytest.mark.parametrize(("losses", "totals", "rho"), [
    # TEST: totals s|dk 3.5, sd|k 3.0, sk|d 3.65. Score ranks [3, 2, 1], total ranks [2, 1, 3]:
    # deviations [1, 0, −1] and [0, −1, 1], Σ = −1, each Σ² = 2: ρ = −0.5 (a higher score, a lower loss,
    # mostly). Pairing the scores with the totals in ranked order instead would give −1.
    (TEST, {("s", "dk"): 3.5, ("sd", "k"): 3.0, ("sk", "d"): 3.65}, -0.5),
    # s|dk 1 + 1 + 2 = 4, sd|k 0.75 + 0.75 + 1.5 = 3, sk|d 0.5 + 2 + 0.5 = 3 (a tie): total ranks
    # [3, 1.5, 1.5], deviations [1, −0.5, −0.5]: Σ dx·dy = 1 + 0 + 0.5 = 1.5, Σ dy² = 1.5, so
    # ρ = 1.5 / √(2 · 1.5) = √3 / 2 ≈ 0.866 (ties ranked 1, 2 instead: 0.5).
    ({"s": {"s": 1.0}, "dk": {"d": 1.0, "k": 2.0}, "sd": {"s": 0.75, "d": 0.75}, "k": {"k": 1.5},
      "sk": {"s": 0.5, "k": 2.0}, "d": {"d": 0.5}},
     {("s", "dk"): 4.0, ("sd", "k"): 3.0, ("sk", "d"): 3.0}, np.sqrt(3) / 2),
])
def test_oracle_records_each_partitions_score_losses_and_their_spearman(losses, totals, rho) -> None:
    method = _oracle_after_the_merge()
    method.affinity = ORACLE_AFFINITY
    method.tested(losses)
    entries = {tuple(p["groups"]): p for p in method.details["oracle_partitions"]}
    assert set(entries) == set(ORACLE_SCORES)
    for groups, entry in entries.items():
        indices = [["sdk".index(t) for t in g] for g in groups]
        assert entry["score"] == pytest.approx(partition_score(ORACLE_AFFINITY, indices))
        assert entry["score"] == pytest.approx(ORACLE_SCORES[groups])
        assert entry["total_test_loss"] == pytest.approx(totals[groups])
        assert entry["test_loss"] == {t: losses[g][t] for g in groups for t in g}
    assert entries[("s", "dk")]["test_loss"] == {"s": losses["s"]["s"], "d": losses["dk"]["d"],
                                                 "k": losses["dk"]["k"]}
    assert entries[("sk", "d")]["test_loss"] == {"s": losses["sk"]["s"], "k": losses["sk"]["k"],
                                                 "d": losses["d"]["d"]}
    assert method.details["oracle_score_spearman"] == pytest.approx(rho)
