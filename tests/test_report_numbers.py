"""The numbers behind `mas-flower report`'s figures, on hand-written results (no run, no PNG): the
co-grouping frequencies and the validation-loss curve."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from mas_flower.report import _val_totals, cogrouping, write_cogrouping_csv
from mas_flower.summary import Run


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
