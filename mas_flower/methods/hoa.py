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
from mas_flower.splitting.hoa import median_abs_gain, pair_gains


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
        single, pair = self.pair_losses(outcome.val_losses)
        self.record_pair_gains(single, pair)
        result = hoa_split(single, pair, self.settings.splits, tasks=list(tasks),
                           single_cost=self.settings.hoa_single_cost)
        self.splits = result.labels(tasks)
        self.details.update(hoa_estimated_total=float(result.score), hoa_optimal=bool(result.optimal))
        return self.stage("groups", [FederationSpec(g, g) for g in self.splits])

    def pair_losses(self, losses: dict[str, dict[str, float]]) -> tuple[list[float], np.ndarray]:
        """(single[j], pair[i, j]) from stage 1's losses per network: pair[i, j] is task j's loss in
        the network of {i, j}."""
        tasks = self.settings.task_set
        single = [losses[t][t] for t in tasks]
        pair = np.zeros((len(tasks), len(tasks)))
        for (i, a), (j, b) in combinations(enumerate(tasks), 2):
            pair[i, j], pair[j, i] = losses[a + b][b], losses[a + b][a]
        return single, pair

    def record_pair_gains(self, single: list[float], pair: np.ndarray, split: str = "val") -> None:
        """Stage 1's losses and the pair-gain matrix g (`pair_gains`) with its median |g| in `details`."""
        g = pair_gains(single, pair)
        self.details.update({f"hoa_single_{split}_loss": dict(zip(self.settings.task_set, single, strict=True)),
                             f"hoa_pair_{split}_loss": pair.tolist(),
                             f"pair_gain_{split}": [[None if np.isnan(v) else float(v) for v in row] for row in g],
                             f"pair_gain_{split}_median_abs": median_abs_gain(g)})
