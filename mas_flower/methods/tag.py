"""TAG (task affinity grouping, Fifty et al. 2021), as the MAS paper ran it.

Stage 1 trains the all-in-one network for R rounds with clients measuring the lookahead affinity
throughout. Up to x possibly overlapping groups (size >= 2, covering every task) with the best
affinity score are chosen and each is trained from scratch for R rounds; every task is reported
by its best group (lowest validation loss). The cost of stage 1 counts.
"""

from __future__ import annotations

from mas_flower.methods.base import FederationSpec, Method, Stage, StageOutcome, register_method
from mas_flower.splitting import tag_split


@register_method("tag")
class TaskAffinityGrouping(Method):
    display_name, paper_order, takes_splits = "TAG", 5, True

    def first_stage(self) -> Stage:
        s = self.settings
        merged = FederationSpec("all", s.task_set, measure_affinity=True)
        return self.stage("all-in-one", [merged], affinity_rounds=s.num_rounds)

    def next_stage(self, outcome: StageOutcome) -> Stage | None:
        if outcome.stage.phase != "all-in-one":
            return None
        tasks = self.settings.task_set
        self.take_affinity(outcome)
        result = tag_split(self.affinity, self.settings.splits)
        self.splits = result.labels(tasks)
        self.details.update(split_score=float(result.score), split_optimal=bool(result.optimal))
        return self.stage("groups", [FederationSpec(g, g) for g in self.splits])
