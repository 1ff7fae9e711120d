"""All-in-one GradNorm: FedAvg on a multi-task network whose task losses are balanced by GradNorm (α)."""

from __future__ import annotations

from mas_flower.methods.base import FederationSpec, Method, Stage, register_method


@register_method("gradnorm")
class GradNorm(Method):
    display_name, paper_order, all_in_one = "GradNorm", 3, True

    def first_stage(self) -> Stage:
        return self.stage("all-in-one", [FederationSpec("all", self.settings.task_set, weighting="gradnorm")])
