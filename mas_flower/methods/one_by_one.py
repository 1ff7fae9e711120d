"""One-by-one: every task is its own single-task federation for R rounds, all in the same rounds.

The accurate but expensive end of the trade-off: n networks, n times the compute of all-in-one.
"""

from __future__ import annotations

from mas_flower.methods.base import FederationSpec, Method, Stage, register_method


@register_method("one-by-one")
class OneByOne(Method):
    display_name, paper_order = "One-by-one", 0

    def first_stage(self) -> Stage:
        return self.stage("single", [FederationSpec(t, t) for t in self.settings.task_set])
