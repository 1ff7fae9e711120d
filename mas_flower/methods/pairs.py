"""Pairs: how strongly do the tasks interact? HOA's stage 1 alone (Standley et al. 2020).

Trains every single task and every pair from scratch for R rounds, all in the same rounds, and
records the relative pair gain g[i, j] = (L_j alone − L_j with i) / L_j alone on the validation and
the test split, with its median |g| (`mas_flower.splitting.hoa.pair_gains`). Grouping can pay only
where |g| is well above the noise of a loss; Standley et al.'s Taskonomy measurements give a median
|g| of 0.023–0.072. Each task is served (and tested) by its single-task network, so the run's test
losses are one-by-one's.
"""

from __future__ import annotations

from mas_flower.methods.base import Stage, StageOutcome, register_method
from mas_flower.methods.hoa import HigherOrderApproximation


@register_method("pairs")
class Pairs(HigherOrderApproximation):
    display_name, paper_order, takes_splits = "Pairs (HOA stage 1)", 101, False

    def next_stage(self, outcome: StageOutcome) -> Stage | None:
        self.record_pair_gains(*self.pair_losses(outcome.val_losses))
        return None

    def serving(self, outcome: StageOutcome) -> dict[str, str]:
        return {t: t for t in self.settings.task_set}

    def tested(self, test_losses: dict[str, dict[str, float]]) -> None:
        self.record_pair_gains(*self.pair_losses(test_losses), split="test")
