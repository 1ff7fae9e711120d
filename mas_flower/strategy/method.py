"""`MethodStrategy`: a Flower Strategy that runs one of our methods (`mas_flower.methods`: MAS, HOA,
TAG, one-by-one, the all-in-one baselines) stage by stage.

Each stage is a `ParallelFederations`; between stages the method decides (measure, split,
estimate). Every federation is aggregated by its own instance of the chosen Flower strategy. After
every round the whole run (method, books, nodes' sampler, every federation's network and Flower
strategy state) is checkpointed in the run folder, so a killed run resumes to identical results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from mas_flower.constant import LOW_SKILL, skills
from mas_flower.energy import EnergyMeter
from mas_flower.live import append_live
from mas_flower.methods import Method, StageOutcome
from mas_flower.methods.base import Stage, State
from mas_flower.settings import home
from mas_flower.strategy.aggregators import StrategyFactory, server_hyperparameters
from mas_flower.strategy.checkpoint import CHECKPOINT_FILE, save_checkpoint
from mas_flower.strategy.divergence import DivergedError
from mas_flower.strategy.ledger import Ledger
from mas_flower.strategy.networks import Networks, initial_states
from mas_flower.strategy.parallel import ParallelFederations
from mas_flower.strategy.roster import NodeRoster, RoundFailed


@dataclass
class Progress:
    """Where the run is: enough, with the ledger, to continue it exactly after a crash (checkpointed)."""

    stage: Stage
    states: dict[str, State]
    next_round: int = 0  # index within the stage
    affinity_rounds: dict[str, list[np.ndarray]] = field(default_factory=dict)
    #: Every federation's Flower strategy, with its state (server-optimiser moments, momentum).
    strategies: dict[str, Any] = field(default_factory=dict)
    #: Per federation and affinity round, every client's report (`mas_flower.splitting.stability`).
    affinity_reports: dict[str, list[Any]] = field(default_factory=dict)


def _networks(states: dict[str, State]) -> Networks:
    """Checkpointed torch state dicts as the stage's networks."""
    return {name: ArrayRecord(state) for name, state in states.items()}


class MethodStrategy(Strategy):
    """Runs `method` over the federation of nodes (Flower `Strategy`).

    Parameters
    ----------
    method : a `mas_flower.methods.Method` (e.g. `build_method(settings)`).
    aggregator : the Flower strategy of every federation: a `server-strategy` name, or a callable
        returning a fresh strategy (e.g. `lambda: FedAdam(eta=0.01)`); default: `settings.server_strategy`.
    run_dir : where checkpoints go (None: no checkpoints).
    checkpoint : a loaded checkpoint (`load_checkpoint`) to resume from.

    After `start`: `outcome` (the final stage), `test_loss` (task -> loss on every node's test split,
    each task served by `method.serving`), `test_metrics` (task -> metric -> value, likewise),
    `test_constant_loss` and `test_skill` (task -> the best constant's loss on the same data, and
    1 − loss / that: `mas_flower.constant`),
    `ledger` (history, time, energy), `outcomes` (every stage).
    """

    def __init__(self, method: Method, aggregator: str | StrategyFactory | None = None, *,
                 run_dir: Path | None = None, checkpoint: dict[str, Any] | None = None) -> None:
        self.method, self.settings = method, method.settings
        self.aggregator = self.settings.server_strategy if aggregator is None else aggregator
        self.run_dir = run_dir
        self.roster = NodeRoster(self.settings, rng_state=checkpoint["rng"] if checkpoint else None)
        self.ledger = Ledger()
        self.outcomes: list[StageOutcome] = []
        self.progress: Progress | None = None
        if checkpoint is not None:
            self.roster.validation_sample = checkpoint.get("validation_sample")  # the same buildings validate on
            self.method = checkpoint["method"]
            self.ledger, self.outcomes, self.progress = checkpoint["ledger"], checkpoint["outcomes"], \
                checkpoint["progress"]
        self.current: ParallelFederations | None = None
        self.outcome: StageOutcome | None = None
        self.test_loss: dict[str, float] = {}
        self.coverage: dict[str, Any] = {}  # which buildings the test covered (`NodeRoster.check_test_coverage`)
        self.meter: EnergyMeter | None = None
        self.test_metrics: dict[str, dict[str, float]] = {}
        self.test_constant_loss: dict[str, float] = {}
        self.test_skill: dict[str, float] = {}
        self.session_started = time.monotonic()
        self.wall_before = self.ledger.wall_seconds
        self.rounds_this_session = 0

    @property
    def nodes(self) -> dict[int, str]:
        return self.roster.nodes

    @property
    def remote(self) -> set[int]:
        return self.roster.remote

    # Flower's Strategy interface: the current stage's federations --------------------------------

    def _stage(self) -> ParallelFederations:
        if self.current is None:
            raise RuntimeError("no stage is running: call start()")
        return self.current

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self._stage().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self._stage().aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._stage().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self._stage().aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        s = self.settings
        name = self.aggregator if isinstance(self.aggregator, str) else "custom"
        log(INFO, "\t├──> method %s on tasks %s, %d rounds, %d of the nodes per round", self.method.name,
            s.task_set, s.num_rounds, s.clients_per_round)
        hyper = server_hyperparameters(s) if name == s.server_strategy else {}
        given = " (" + ", ".join(f"{k}={v}" for k, v in hyper.items()) + ")" if hyper else ""
        log(INFO, "\t└──> every federation aggregated by its own %s strategy%s", name, given)
        if self.current is not None:
            self.current.summary()

    # Running -------------------------------------------------------------------------------------

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int | None = None,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Every stage of the method (from the checkpoint, if resuming), then every task's test loss.

        Flower's signature, as a thin adapter: the method decides the networks, rounds and messages and
        `reply-timeout` bounds the wait for replies, so a caller passing `initial_arrays`, `num_rounds`,
        `timeout`, `train_config`, `evaluate_config` or `evaluate_fn` gets a ValueError naming each,
        not a run that silently ignores them. This machine is metered only when some nodes
        share it (as in simulation), so that it is counted once; remote nodes meter themselves.
        Returns the final stage's networks (keyed `<federation>/<parameter>`) and its metrics.
        Raises RoundFailed when a round gets too few valid replies after every retry, and
        DivergedError (`mas_flower.strategy.divergence`) when a federation's strategy returns a broken
        or non-finite network or its validation loss is non-finite: the round it happened in is not
        checkpointed. A validation loss above 3x its first is logged and recorded, not stopped.
        """
        given = {"initial_arrays": initial_arrays is not None, "num_rounds": num_rounds is not None,
                 "timeout": timeout != 3600, "train_config": train_config is not None,
                 "evaluate_config": evaluate_config is not None, "evaluate_fn": evaluate_fn is not None}
        if ignored := [name for name, passed in given.items() if passed]:
            raise ValueError(f"{type(self).__name__}.start cannot honour {', '.join(ignored)}: the method decides "
                             "the networks, rounds and messages (run-config keys such as num-rounds and lr), and "
                             "`reply-timeout` bounds the wait for replies. Call start(grid).")
        log(INFO, "Starting %s:", type(self).__name__)
        self.summary()
        if not self.nodes:
            self.roster.discover(grid)
        s = self.settings
        meter = EnergyMeter(self.run_dir / "carbontracker" if self.run_dir else None,
                            country=s.energy_country or None, intensity_g_per_kwh=s.energy_intensity or None,
                            probe_cache=home() / "cache")
        self.ledger.sessions += 1
        if len(self.remote) < len(self.nodes):
            meter.start()
            self.meter = meter
        try:
            result = self._run_stages(grid)
        except RoundFailed as err:
            saved = self.run_dir is not None and (self.run_dir / CHECKPOINT_FILE).exists()
            where = f"; the run stops here, its checkpoint is in {self.run_dir} (resume='{self.run_dir}')" \
                if saved else "; the run stops here, before any checkpoint was written (nothing to resume)"
            raise RoundFailed(f"{err}{where}") from None
        except DivergedError as err:
            saved = self.run_dir is not None and (self.run_dir / CHECKPOINT_FILE).exists()
            kept = f"; {self.run_dir} keeps the checkpoint of the rounds before it, for inspection" if saved else ""
            raise DivergedError(f"{err}{kept}") from None
        finally:
            self._bank_energy(restart=False)
        return result

    def _driver(self, progress: Progress) -> ParallelFederations:
        driver = ParallelFederations(progress.stage, self.settings, self.aggregator, roster=self.roster,
                                     ledger=self.ledger, strategies=progress.strategies or None,
                                     on_round=self._after_round)
        progress.strategies = driver.strategies  # the live objects: checkpoints hold their state
        driver.affinity_rounds = progress.affinity_rounds
        driver.affinity_reports = progress.affinity_reports
        return driver

    def _begin(self, stage) -> Progress:
        log(INFO, "stage %r: %d round(s), federations %s", stage.phase, stage.rounds,
            ", ".join(f"{f.name}({f.tasks})" for f in stage.federations))
        return Progress(stage, initial_states(self.settings, stage.federations))

    def _run_stages(self, grid: Grid) -> Result:
        if self.progress is None:
            self.progress = self._begin(self.method.first_stage())
        else:
            log(INFO, "resuming stage %r at round %d of %d", self.progress.stage.phase,
                self.progress.next_round + 1, self.progress.stage.rounds)
        while True:
            self.current = self._driver(self.progress)
            result = self.current.run(grid, _networks(self.progress.states), first_round=self.progress.next_round)
            outcome = self._outcome(grid, self.progress)
            self.outcomes.append(outcome)
            stage = self.method.next_stage(outcome)
            if stage is None:
                break
            self.progress = self._begin(stage)
            self.checkpoint()
        self.outcome = outcome
        serving = self.method.serving(outcome)
        test = self.current.evaluate(grid, self.settings.num_rounds, self.current.networks, "test")
        evaluation = self.current.evaluation
        assert evaluation is not None
        self.coverage = self.roster.check_test_coverage(evaluation.covered, evaluation.uncovered)
        self.test_loss = {letter: test[name][letter] for letter, name in serving.items()}
        floor = evaluation.constant_losses
        self.test_constant_loss = {letter: floor[name][letter] for letter, name in serving.items() if name in floor}
        self.test_skill = skills(self.test_loss, self.test_constant_loss)
        for letter, value in self.test_skill.items():
            if not value >= LOW_SKILL:
                log(WARNING, "task %s: the network %r that serves it ends with a test skill of %.3f (< %.1f: "
                    "barely better than predicting the best constant, loss %.4f against %.4f); train longer or "
                    "raise lr before reading comparisons from this run", letter, serving[letter], value,
                    LOW_SKILL, self.test_loss[letter], self.test_constant_loss[letter])
        self.method.tested(test)
        sums = evaluation.task_metrics
        self.test_metrics = {letter: sums[name].compute()[letter] for letter, name in serving.items() if name in sums}
        self._count_wall_time()
        return result

    def _outcome(self, grid: Grid, progress: Progress) -> StageOutcome:
        stage = progress.stage
        outcome = StageOutcome(stage, progress.states, affinity_rounds=progress.affinity_rounds,
                               affinity_reports=progress.affinity_reports)
        outcome.affinity = {k: np.mean(v, axis=0) for k, v in progress.affinity_rounds.items()}
        if stage.rounds and self.ledger.history:
            outcome.val_losses = {k: e["val_loss"] for k, e in self.ledger.history[-1]["federations"].items()}
        else:
            outcome.val_losses = dict(self._driver(progress).evaluate(
                grid, stage.schedule_start, _networks(progress.states), "val"))
        return outcome

    def _after_round(self, driver: ParallelFederations) -> None:
        assert self.progress is not None
        self.progress.states = {n: r.to_torch_state_dict() for n, r in driver.networks.items()}
        self.progress.next_round += 1
        self.rounds_this_session += 1
        self._bank_energy(restart=True)
        if self.run_dir is not None:  # before the checkpoint: a crash between them repeats the line, loses none
            append_live(self.run_dir, self.ledger.history[-1], self.ledger.accounts.totals())
        self.checkpoint()
        self._log_round(driver, self.ledger.history[-1])

    def _bank_energy(self, *, restart: bool) -> None:
        """Close this machine's meter into `ledger.local_energy` (one part per round, so that every
        checkpoint holds the energy metered so far and a resumed run keeps it), then meter on."""
        if self.meter is None or not self.meter.running:
            return
        part = self.meter.stop().as_dict()
        part.update(session=self.ledger.sessions, rounds_done=len(self.ledger.history))
        self.ledger.local_energy.append(part)
        if restart:
            self.meter.start()

    def _count_wall_time(self) -> None:
        """Wall time of the run so far: earlier sessions (before a resume) plus this one."""
        self.ledger.wall_seconds = self.wall_before + time.monotonic() - self.session_started

    def checkpoint(self) -> None:
        """Everything needed to continue exactly, written atomically (nothing without a run folder)."""
        self._count_wall_time()
        if self.run_dir is None:
            return
        save_checkpoint(self.run_dir, {
            "config": self.settings.to_run_config(), "method": self.method, "ledger": self.ledger,
            "outcomes": self.outcomes, "progress": self.progress, "rng": self.roster.rng.bit_generator.state,
            "validation_sample": self.roster.validation_sample,
        })

    def _log_round(self, driver: ParallelFederations, record: dict[str, Any]) -> None:
        stage = driver.stage
        elapsed = time.monotonic() - self.session_started
        left = stage.rounds - (record["round"] - stage.schedule_start)
        remaining = elapsed / max(self.rounds_this_session, 1) * max(left, 0)
        val = "  ".join(f"{name}: {sum(e['val_loss'].values()):.4f}" for name, e in record["federations"].items()
                        if "val_loss" in e) or "(not validated this round)"
        val += validation_note(record)
        log(INFO, "[%s] round %d/%d  trained on %d of %d nodes (%s)  val loss %s  elapsed %.0fs  stage left ~%.0fs",
            stage.phase, record["round"], stage.schedule_total, len(record["sampled"]), len(self.roster.nodes),
            ",".join(record["sampled"]), val, elapsed, remaining)


def validation_note(record: dict[str, Any]) -> str:
    """What the round line adds after the validation losses when they are estimates: ' (validation on 100
    of 1000 nodes: an estimate)' ('98-100 of' when the networks' counts differ); '' when every validated
    network covered every node, or nothing was validated. Its length does not grow with the federation."""
    entries = [e for e in record["federations"].values() if e.get("val_estimate")]
    if not entries:
        return ""
    counts = sorted({e["val_nodes"] for e in entries})
    shown = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f" (validation on {shown} of {entries[0]['val_of']} nodes: an estimate)"
