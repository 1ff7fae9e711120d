"""All-in-one FedAvg: one multi-task network for every task, R rounds (the paper's cheap baseline)."""

from __future__ import annotations

from mas_flower.methods.base import FederationSpec, Method, Stage, register_method


@register_method("fedavg")
class FedAvg(Method):
    display_name, paper_order, all_in_one = "FedAvg", 1, True

    def first_stage(self) -> Stage:
        return self.stage("all-in-one", [FederationSpec("all", self.settings.task_set)])
