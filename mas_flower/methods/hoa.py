"""HOA (higher-order approximation, Standley et al. 2020), as the MAS paper ran it.

Stage 1 trains every single task and every pair from scratch for R rounds. Each task's loss in a
larger group is estimated as the mean of its losses over the pairs inside the group; the x groups
(overlapping allowed, as in Standley) minimising the sum of each task's best estimate are chosen
and trained from scratch for R rounds. The estimates use validation losses (the paper used test
losses, which would select on the test set). Every chosen group is retrained, pairs and singles
included, so the cost matches the paper's accounting; the stage-1 networks count towards it too.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from mas_flower.methods.base import FederationSpec, Method, Stage, StageOutcome, register_method
from mas_flower.splitting import hoa_split


@register_method("hoa")
class HigherOrderApproximation(Method):
    display_name, paper_order, takes_splits = "HOA", 4, True

    def first_stage(self) -> Stage:
        tasks = self.settings.task_set
        singles = [FederationSpec(t, t) for t in tasks]
        pairs = [FederationSpec(a + b, a + b) for a, b in combinations(tasks, 2)]
        return self.stage("pairs", singles + pairs)

    def next_stage(self, outcome: StageOutcome) -> Stage | None:
        if outcome.stage.phase != "pairs":
            return None
        tasks = self.settings.task_set
        val = outcome.val_losses
        single = [val[t][t] for t in tasks]
        pair = np.zeros((len(tasks), len(tasks)))
        for (i, a), (j, b) in combinations(enumerate(tasks), 2):
            pair[i, j], pair[j, i] = val[a + b][b], val[a + b][a]
        result = hoa_split(single, pair, self.settings.splits, tasks=list(tasks),
                           single_cost=self.settings.hoa_single_cost)
        self.splits = result.labels(tasks)
        self.details.update(hoa_single_val_loss=dict(zip(tasks, single, strict=True)),
                            hoa_pair_val_loss=pair.tolist(), hoa_estimated_total=float(result.score),
                            hoa_optimal=bool(result.optimal))
        return self.stage("groups", [FederationSpec(g, g) for g in self.splits])
