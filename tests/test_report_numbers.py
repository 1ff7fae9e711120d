"""The numbers behind `mas-flower report`'s figures, on hand-written results (no run, no PNG): the
co-grouping frequencies, the validation-loss and validation-skill curves, the pair-gain scale."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from mas_flower.tools.report import (
    _pair_gain,
    _val_skills,
    _val_totals,
    cogrouping,
    pair_gain_scale,
    write_cogrouping_csv,
)
from mas_flower.tools.summary import Run


def _run(seed: int, splits: list[str] | None, history: list | None = None, task_set: str = "sdk") -> Run:
    results = {"method": "mas", "task_set": task_set, "seed": seed, "config": {"splits": 2},
               "history": history or []}
    if splits is not None:
        results["splits"] = splits
    return Run(Path(f"/runs/mas-{seed}"), results)


def test_cogrouping_counts_only_the_runs_that_recorded_groups(tmp_path: Path) -> None:
    # Three finished seeds and one unfinished (no groups yet). Task order: the paper's, s d k.
    runs = [_run(0, ["sd", "k"]), _run(1, ["sd", "k"]), _run(2, ["s", "dk"]), _run(3, None)]
    (freq, n), = cogrouping({("sdk", "mas-2"): runs}).values()
    # s-d together in 2 of the 3 runs with groups, d-k in 1 of 3, s-k never (not 2/4, 1/4 over all runs)
    assert n == 3
    np.testing.assert_allclose(freq, [[1, 2 / 3, 0], [2 / 3, 1, 1 / 3], [0, 1 / 3, 1]])
    path = write_cogrouping_csv(tmp_path / "cogrouping.csv", {("sdk", "mas-2"): (freq, n)})
    rows = [r[2:6] for r in csv.reader(path.open())][1:]
    assert rows == [["s", "d", "2", "3"], ["s", "k", "0", "3"], ["d", "k", "1", "3"]]
    assert cogrouping({("sdk", "mas-2"): [_run(3, None)]}) == {}  # no groups recorded: no figure


def test_cogrouping_of_overlapping_groups_in_the_papers_task_order() -> None:
    # TAG's groups may overlap: {k, s} and {d, k} put k with both, but s and d are never together.
    (freq, n), = cogrouping({("kds", "tag-2"): [_run(0, ["ks", "dk"], task_set="kds"),
                                                 _run(1, ["ksd"], task_set="kds")]}).values()
    # rows and columns s, d, k (`sdnkterca`), whatever the task string's order
    np.testing.assert_allclose(freq, [[1, 1 / 2, 1], [1 / 2, 1, 1], [1, 1, 1]])
    assert n == 2


def test_the_validation_curve_takes_each_tasks_best_network() -> None:
    history = [
        # HOA's pairs stage: s in three networks, d in two, k in two; each task's lowest counts.
        {"round": 1, "federations": {"s": {"val_loss": {"s": 1.0}}, "sd": {"val_loss": {"s": 0.5, "d": 2.0}},
                                     "sk": {"val_loss": {"s": 3.0, "k": 0.25}}, "dk": {"val_loss": {"d": 1.5,
                                                                                                     "k": 4.0}}}},
        {"round": 2, "federations": {"sd": {"val_loss": {"s": 0.5, "d": 0.75}}}},  # no k: not a full round
        {"round": 3, "federations": {"sdk": {"val_loss": {"s": 0.5, "d": 0.25, "k": 2.0}}}},
    ]
    # round 1: s min(1.0, 0.5, 3.0) + d min(2.0, 1.5) + k min(0.25, 4.0) = 0.5 + 1.5 + 0.25 = 2.25
    # (the worst networks would give 3.0 + 2.0 + 4.0 = 9.0); round 3: 0.5 + 0.25 + 2.0 = 2.75
    assert _val_totals(_run(0, None, history)) == pytest.approx([2.25, 2.75])


def test_the_skill_curve_takes_each_tasks_best_network() -> None:
    history = [
        {"round": 1, "federations": {"s": {"val_skill": {"s": 0.25}}, "sd": {"val_skill": {"s": 0.5, "d": -0.25}},
                                     "dk": {"val_skill": {"d": 0.125, "k": 0.75}}}},
        {"round": 2, "federations": {"sd": {"val_loss": {"s": 0.5, "d": 0.75}}}},  # no skill recorded
        {"round": 3, "federations": {"sd": {"val_skill": {"s": 0.5, "d": 0.2}}}},  # no k: not a full round
        {"round": 4, "federations": {"sdk": {"val_skill": {"s": 0.625, "d": 0.375, "k": -0.5}}}},
    ]
    # round 1: s max(0.25, 0.5), d max(-0.25, 0.125), k 0.75 (the highest skill = the lowest loss)
    assert _val_skills(_run(0, None, history)) == [{"s": 0.5, "d": 0.125, "k": 0.75},
                                                    {"s": 0.625, "d": 0.375, "k": -0.5}]


def test_pair_gain_scale_is_the_largest_gain_of_all_runs() -> None:
    hoa = _run(0, ["sd", "k"])
    hoa.results["details"] = {"pair_gain_val": [[None, 0.05, -0.02], [0.3, None, 0.04], [-0.01, 0.08, None]]}
    pairs = _run(1, None)
    pairs.results["details"] = {"pair_gain_val": [[None, -0.4, 0.02], [0.01, None, 0.03], [0.02, 0.05, None]]}
    g = _pair_gain(hoa)
    assert g[1, 0] == 0.3 and g[0, 1] == 0.05 and np.isnan(np.diag(g)).all()  # row i helps column j, as recorded
    assert pair_gain_scale([hoa, pairs]) == 0.4 and pair_gain_scale([hoa]) == 0.3  # |-0.4| counts
    assert _pair_gain(_run(2, None)) is None and pair_gain_scale([_run(2, None)]) == 1.0  # no gains: default scale
