"""Oracle: does MAS's split pay? (docs/results.md, section "The oracle")

After the same merge stage as MAS (R0 rounds, affinity measured), the oracle continues **every**
partition of the task set into exactly x groups, each group from the merged encoder and its own
decoders, for the R − R0 split rounds, as MAS does for its one partition. A group shared by several
partitions (x ≥ 3) is trained once: it starts from the same weights, sees the same nodes and the same
seeds, so training it twice would give the same network. For `sdnkt` and x = 2 that is 15
partitions, 30 groups.

At test time every group is tested; each partition's total test loss is the sum of its groups' test
losses of their own tasks. `details` in results.json holds every partition with its total (best
first), its affinity score and per-task test losses, the partition MAS's affinity picked and its rank
(1 = best; ties share the better rank), and Spearman's ρ between score and total test loss.
The run's `test_loss` is that of MAS's partition, so it equals a MAS run with the same settings.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from mas_flower.methods.base import FederationSpec, Stage, StageOutcome, register_method
from mas_flower.methods.mas import MergeAndSplit
from mas_flower.models import subnetwork_state
from mas_flower.splitting import partition_score


def partitions(tasks: str, blocks: int) -> Iterator[list[str]]:
    """Every partition of the letters of `tasks` into exactly `blocks` non-empty groups, each group in
    task-set order and the groups ordered by their first letter (S(n, k) of them, a Stirling number)."""
    if blocks < 1 or blocks > len(tasks):
        return
    if blocks == len(tasks):
        yield list(tasks)
        return
    if blocks == 1:
        yield [tasks]
        return
    first, rest = tasks[0], tasks[1:]
    for part in partitions(rest, blocks - 1):  # the first letter alone
        yield [first, *part]
    for part in partitions(rest, blocks):  # the first letter joins one of the groups
        for i in range(len(part)):
            joined = [*part[:i], first + part[i], *part[i + 1:]]
            yield sorted(joined, key=lambda g: tasks.index(g[0]))


@register_method("oracle")
class Oracle(MergeAndSplit):
    display_name = "Oracle"
    paper_order = 100

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.partitions: list[list[str]] = []

    def next_stage(self, outcome: StageOutcome) -> Stage | None:
        mas_stage = super().next_stage(outcome)  # MAS's choice: self.splits, affinity, its score
        if mas_stage is None:
            return None
        self.partitions = list(partitions(self.settings.task_set, self.settings.splits))
        groups = list(dict.fromkeys(g for p in self.partitions for g in p))
        merged = outcome.states["all"]
        federations = [FederationSpec(g, g, init=subnetwork_state(merged, g)) for g in groups]
        stage = self.stage("split", federations, schedule_start=self.settings.merge_rounds)
        stage.restart_schedule = mas_stage.restart_schedule
        return stage

    def serving(self, outcome: StageOutcome) -> dict[str, str]:
        """MAS's partition serves the tasks (after the merge stage; before it, the merged network)."""
        if outcome.stage.phase != "split" or self.splits is None:
            return super().serving(outcome)
        return {t: next(g for g in self.splits if t in g) for t in self.settings.task_set}

    def tested(self, test_losses: dict[str, dict[str, float]]) -> None:
        """Rank MAS's partition among all by total test loss, and check the score MAS maximises
        against the losses: `oracle_score_spearman` is Spearman's ρ between each partition's affinity
        score and its total test loss (−1: a higher score always meant a lower loss, as MAS assumes;
        0: the score says nothing about the loss)."""
        tasks = self.settings.task_set
        totals = [(p, sum(test_losses[g][t] for g in p for t in g)) for p in self.partitions]
        if not totals:
            return
        chosen = sorted(self.splits or [], key=lambda g: tasks.index(g[0]))
        mine = next(total for p, total in totals if p == chosen)
        score = {tuple(p): partition_score(self.affinity, [[tasks.index(t) for t in g] for g in p])
                 for p in self.partitions}
        ranked = sorted(totals, key=lambda pt: pt[1])
        self.details.update(
            oracle_partitions=[{"groups": p, "total_test_loss": total, "score": score[tuple(p)],
                                "test_loss": {t: test_losses[g][t] for g in p for t in g}} for p, total in ranked],
            oracle_mas_partition=chosen, oracle_mas_total_test_loss=mine,
            oracle_mas_rank=1 + sum(total < mine for _, total in totals), oracle_partition_count=len(totals),
            oracle_score_spearman=spearman([score[tuple(p)] for p, _ in totals], [t for _, t in totals]))


def ranks(values: list[float]) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (as Spearman's ρ needs)."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="stable")
    out = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        out[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the (tie-averaged) ranks; NaN when
    either side is constant or has fewer than 2 values."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} values against {len(y)}")
    if len(x) < 2:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])
