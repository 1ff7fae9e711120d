"""MAS (Merge And Split, Zhuang et al., ICCV 2023).

Merge: one multi-task network trained with FedAvg for R0 rounds, clients measuring the lookahead
affinity in its first `affinity-rounds` rounds. Split: the partition into exactly x groups with the
best affinity score. Continue: each group becomes its own federation, started from the merged
encoder and its own decoders, and trains until round R on the same schedule (`split-schedule =
continue`), or on the schedule restarted at `lr` over the R − R0 split rounds (`restart`: the MAS
authors' released recipe, lr·(1 − i/(R − R0))^0.9 in the split stage's round i, 0-based).
"""

from __future__ import annotations

from mas_flower.methods.base import FederationSpec, Method, Stage, StageOutcome, register_method
from mas_flower.models import subnetwork_state
from mas_flower.splitting import mas_split
from mas_flower.splitting.stability import split_stability

#: Bootstrap resamples of the clients' affinity reports behind `split_stability` in results.json.
STABILITY_RESAMPLES = 200


@register_method("mas")
class MergeAndSplit(Method):
    display_name, paper_order, takes_splits = "MAS", 6, True

    @classmethod
    def check(cls, settings) -> list[str]:
        s, problems = settings, super().check(settings)
        if not 1 <= s.merge_rounds <= s.num_rounds:
            problems.append(f"merge-rounds={s.merge_rounds} must be between 1 and num-rounds={s.num_rounds}")
        if not 1 <= s.affinity_rounds <= s.merge_rounds:
            problems.append(f"affinity-rounds={s.affinity_rounds} must be between 1 and merge-rounds={s.merge_rounds}")
        return problems

    def first_stage(self) -> Stage:
        s = self.settings
        merged = FederationSpec("all", s.task_set, measure_affinity=True)
        return self.stage("merge", [merged], s.merge_rounds, affinity_rounds=s.affinity_rounds)

    def next_stage(self, outcome: StageOutcome) -> Stage | None:
        if outcome.stage.phase != "merge":
            return None
        s = self.settings
        result = mas_split(self.take_affinity(outcome), s.splits)
        groups = result.labels(s.task_set)
        self.splits = groups
        self.details["split_score"] = float(result.score)
        self.details["split_optimal"] = bool(result.optimal)
        reports = outcome.affinity_reports.get("all", [])
        if reports:
            self.details["split_stability"] = split_stability(reports, s.splits, resamples=STABILITY_RESAMPLES,
                                                              seed=s.seed)
        merged = outcome.states["all"]
        federations = [FederationSpec(g, g, init=subnetwork_state(merged, g)) for g in groups]
        stage = self.stage("split", federations, schedule_start=s.merge_rounds)
        stage.restart_schedule = s.split_schedule == "restart"
        return stage
