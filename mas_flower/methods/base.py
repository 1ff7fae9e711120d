"""The shared interface of federated methods (MAS and the paper's baselines).

A method is a plan, not a training loop: it says which federations (one network per task string)
train in which stage, how they start, and what happens between stages (measure, split, estimate).
The Flower layer (`server_app`) runs the stages round by round; nothing here touches Flower, so a
method can be tested and reused on its own. Adding a method is adding a file with a `Method`
subclass decorated by `register_method`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from mas_flower.registry import Registry

if TYPE_CHECKING:  # settings validates through the methods, never the other way round at import time
    from mas_flower.settings import Settings

State = dict[str, torch.Tensor]


@dataclass
class FederationSpec:
    """One FL task: a network for `tasks`, trained on the sampled clients every round of its stage."""

    name: str
    tasks: str
    #: Starting weights by parameter name; None means a fresh network from the run's seed.
    init: State | None = None
    prox_mu: float = 0.0
    weighting: str = "equal"
    measure_affinity: bool = False


@dataclass
class Stage:
    """Rounds in which a fixed set of federations trains side by side on the same sampled clients."""

    phase: str
    federations: list[FederationSpec]
    rounds: int
    #: The learning-rate schedule lr·(1 − r/R)^0.9 runs over `schedule_total` rounds starting at
    #: `schedule_start`: MAS's split stage continues the merge stage's schedule, while baselines
    #: that retrain from scratch restart it.
    schedule_start: int = 0
    schedule_total: int = 0
    #: The first rounds of this stage in which federations with `measure_affinity` measure it.
    affinity_rounds: int = 0
    #: Restart the schedule at `lr` over this stage's own rounds (MAS's `split-schedule = restart`).
    restart_schedule: bool = False


@dataclass
class StageOutcome:
    """What a finished stage leaves behind for the method to decide on."""

    stage: Stage
    states: dict[str, State]
    #: Per federation that measured affinity: the matrix averaged over the affinity rounds, and
    #: the per-round matrices (count-weighted means over clients).
    affinity: dict[str, np.ndarray] = field(default_factory=dict)
    affinity_rounds: dict[str, list[np.ndarray]] = field(default_factory=dict)
    #: Per federation and affinity round, every client's `AffinityReport` (standard error, bootstrap).
    affinity_reports: dict[str, list[list[Any]]] = field(default_factory=dict)
    #: Last validation losses per federation: task letter -> loss.
    val_losses: dict[str, dict[str, float]] = field(default_factory=dict)


class Method(ABC):
    """A federated multiple-task learning method, as a sequence of stages.

    The class attributes are the facts the rest of the app needs about a method (settings checks,
    run names, suite labels, the paper's tables), so that adding a method is adding one file.
    """

    name: str = ""
    #: Whether it takes a number of groups x (`splits`); suites then write it `mas-2`.
    takes_splits: ClassVar[bool] = False
    #: How the paper's tables write it (`FedAvg`, `MAS`).
    display_name: ClassVar[str] = ""
    #: Its row in the paper's tables (lower first); methods not in the paper come after them.
    paper_order: ClassVar[int] = 100
    #: One network for every task (marked with * in the paper's tables).
    all_in_one: ClassVar[bool] = False

    @classmethod
    def check(cls, settings: Settings) -> list[str]:
        """What is wrong with `settings` for this method (empty when nothing), one message per problem."""
        n = len(settings.task_set)
        if cls.takes_splits and not 1 <= settings.splits <= n:
            return [f"splits={settings.splits} must be between 1 and the {n} tasks of {settings.task_set!r}"]
        return []

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Final groups (task strings) when the method chooses them, for results.json's `splits`.
        self.splits: list[str] | None = None
        #: The affinity matrix the method measured (tasks in task-set order), for results.json.
        self.affinity: np.ndarray | None = None
        #: Its per-entry standard error (`mas_flower.splitting.stability.standard_error`), if known.
        self.affinity_se: np.ndarray | None = None
        #: Extra, method-specific facts for results.json (estimates, scores, ...).
        self.details: dict[str, object] = {}

    def take_affinity(self, outcome: StageOutcome, federation: str = "all") -> np.ndarray:
        """The affinity a stage measured in `federation`, kept with its standard error."""
        from mas_flower.splitting.stability import standard_error

        self.affinity = outcome.affinity[federation]
        self.affinity_se = standard_error(outcome.affinity_reports.get(federation, []))
        return self.affinity

    @abstractmethod
    def first_stage(self) -> Stage:
        """The stage the run starts with."""

    def next_stage(self, outcome: StageOutcome) -> Stage | None:
        """The stage after `outcome`, or None when the run is over. Single-stage methods keep this."""
        return None

    def serving(self, outcome: StageOutcome) -> dict[str, str]:
        """Which federation of the final stage serves each task at test time.

        Default: the federation holding the task; where several do (overlapping groups), the one
        with the lowest validation loss for that task (a choice made without the test set).
        """
        serving: dict[str, str] = {}
        for letter in self.settings.task_set:
            holders = [f.name for f in outcome.stage.federations if letter in f.tasks]
            serving[letter] = min(holders, key=lambda n: outcome.val_losses.get(n, {}).get(letter, np.inf))
        return serving

    def tested(self, test_losses: dict[str, dict[str, float]]) -> None:
        """Called after the test with every final federation's test losses (federation -> task ->
        loss), for methods that report on all of them (the oracle); nothing by default."""
        return None

    # Helpers shared by the methods -------------------------------------------------------------

    def stage(self, phase: str, federations: list[FederationSpec], rounds: int | None = None,
              *, schedule_start: int = 0, affinity_rounds: int = 0) -> Stage:
        """A stage on the run's schedule (R = num-rounds)."""
        rounds = self.settings.num_rounds - schedule_start if rounds is None else rounds
        return Stage(phase, federations, rounds, schedule_start, self.settings.num_rounds, affinity_rounds)


METHODS: Registry[type[Method]] = Registry("method")
#: Class decorator: make a method available as `method = "<name>"` in the run config.
register_method = METHODS.register
