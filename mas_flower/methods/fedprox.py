"""All-in-one FedProx: FedAvg plus the proximal term μ/2·‖w − w_global‖² on every trained parameter."""

from __future__ import annotations

from mas_flower.methods.base import FederationSpec, Method, Stage, register_method


@register_method("fedprox")
class FedProx(Method):
    display_name, paper_order, all_in_one = "FedProx", 2, True

    def first_stage(self) -> Stage:
        s = self.settings
        return self.stage("all-in-one", [FederationSpec("all", s.task_set, prox_mu=s.fedprox_mu)])
