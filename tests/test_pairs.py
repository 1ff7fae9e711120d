"""The pair-gain matrix g (how strongly tasks interact) on hand-written losses, from HOA and from the
`pairs` method (HOA's stage 1 alone)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mas_flower.defaults import load_settings
from mas_flower.methods import StageOutcome, build_method
from mas_flower.splitting.hoa import median_abs_gain, pair_gains

#: Stage-1 losses of `sdk`: singles s 1.1, d 0.9, k 1.3; in pair sd: s 0.4, d 1.6; sk: s 1.5, k 0.8;
#: dk: d 0.6, k 0.8.
VAL = {"s": {"s": 1.1}, "d": {"d": 0.9}, "k": {"k": 1.3},
       "sd": {"s": 0.4, "d": 1.6}, "sk": {"s": 1.5, "k": 0.8}, "dk": {"d": 0.6, "k": 0.8}}
#: g[i][j] = (L_j alone − L_j with i) / L_j alone, row i helps column j:
#: g[s][d] = (0.9 − 1.6) / 0.9 = −7/9     g[s][k] = (1.3 − 0.8) / 1.3 = 5/13
#: g[d][s] = (1.1 − 0.4) / 1.1 = 7/11     g[d][k] = (1.3 − 0.8) / 1.3 = 5/13
#: g[k][s] = (1.1 − 1.5) / 1.1 = −4/11    g[k][d] = (0.9 − 0.6) / 0.9 = 1/3
G = [[math.nan, -7 / 9, 5 / 13], [7 / 11, math.nan, 5 / 13], [-4 / 11, 1 / 3, math.nan]]
#: |g| sorted: 1/3, 4/11, 5/13, 5/13, 7/11, 7/9 -> median (5/13 + 5/13) / 2 = 5/13
MEDIAN = 5 / 13


def settings(method: str):
    return load_settings({}, {"method": method, "task-set": "sdk", "splits": 2})


def test_pair_gains_by_hand() -> None:
    pair = np.array([[0.0, 1.6, 0.8], [0.4, 0.0, 0.8], [1.5, 0.6, 0.0]])
    g = pair_gains([1.1, 0.9, 1.3], pair)
    np.testing.assert_allclose(g, G, rtol=1e-12)
    assert median_abs_gain(g) == pytest.approx(MEDIAN)
    with pytest.raises(ValueError, match="positive"):
        pair_gains([1.1, 0.0, 1.3], pair)
    with pytest.raises(ValueError, match="shape"):
        pair_gains([1.1, 0.9], pair)


def test_hoa_records_the_pair_gains_of_its_validation_losses() -> None:
    method = build_method(settings("hoa"))
    method.next_stage(StageOutcome(method.first_stage(), {}, val_losses=VAL))
    assert np.allclose(np.array(method.details["pair_gain_val"], dtype=float), G, equal_nan=True)
    assert method.details["pair_gain_val_median_abs"] == pytest.approx(MEDIAN)


def test_pairs_method_is_hoas_first_stage_alone_served_by_the_singles() -> None:
    method = build_method(settings("pairs"))
    first = method.first_stage()
    assert sorted(f.tasks for f in first.federations) == sorted(["s", "d", "k", "sd", "sk", "dk"])
    outcome = StageOutcome(first, {}, val_losses=VAL)
    assert method.next_stage(outcome) is None
    assert method.serving(outcome) == {"s": "s", "d": "d", "k": "k"}
    assert method.details["pair_gain_val_median_abs"] == pytest.approx(MEDIAN)
    # The test split gets its own matrix: here every pair loss is 10 % below the single's.
    test = {"s": {"s": 1.0}, "d": {"d": 2.0}, "k": {"k": 0.5},
            "sd": {"s": 0.9, "d": 1.8}, "sk": {"s": 0.9, "k": 0.45}, "dk": {"d": 1.8, "k": 0.45}}
    method.tested(test)
    g = np.array(method.details["pair_gain_test"], dtype=float)
    assert np.allclose(g[~np.eye(3, dtype=bool)], 0.1)
    assert method.details["pair_gain_test_median_abs"] == pytest.approx(0.1)
