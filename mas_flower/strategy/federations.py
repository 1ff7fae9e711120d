"""`ParallelFederations`: a Flower Strategy training several federations (one network per task
group) in the same rounds, on the same sampled nodes, each aggregated by its own Flower strategy.

The arrays it takes and returns hold every federation's network in one ArrayRecord, keyed
`<federation>/<parameter>`. Each round it samples K distinct nodes from a seeded generator, hands
each federation's Flower strategy (FedAvg, FedAdam, ...) only those nodes, and merges what the
strategies configure into one message per node carrying every federation (`mas_flower.protocol`).
Replies are checked per federation (`replies.py`), and each federation's accepted replies go to
its own strategy's `aggregate_train`, so server-optimiser state is kept per network. What the strategy
returns is checked too (`divergence.py`): a broken or diverged network stops the run with
`DivergedError` before its round is checkpointed, and a validation loss that explodes is named.
Validation goes to the run's fixed sample of `validation-nodes` buildings (`NodeRoster.validators`), the
final test to every node; each validation loss is recorded with the number of nodes behind it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from functools import partial
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import FLOWER_LOGGER, log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from mas_flower import protocol as P
from mas_flower import wire
from mas_flower.constant import skills
from mas_flower.methods.base import FederationSpec, Stage, State
from mas_flower.models import build_model
from mas_flower.settings import Settings
from mas_flower.splitting.stability import AffinityReport
from mas_flower.strategy import membership
from mas_flower.strategy.accounting import book_eval, book_train, count_exchange, take_metric_sums
from mas_flower.strategy.aggregators import StrategyFactory, strategy_factory
from mas_flower.strategy.bn_statistics import averaged_statistics
from mas_flower.strategy.divergence import (
    LOWER,
    NEW_RUN,
    DivergedError,
    check_aggregate,
    strategy_name,
    watch_validation,
)
from mas_flower.strategy.exchange import exchange
from mas_flower.strategy.replies import non_finite, reject_evaluate_reply, reject_train_reply
from mas_flower.strategy.run import Ledger, NodeRoster, RoundFailed, stable_seed
from mas_flower.strategy.sampling import check_sampling, configured

SEP = "/"


def join_arrays(states: dict[str, State]) -> ArrayRecord:
    """Every federation's network in one ArrayRecord, keyed `<federation>/<parameter>`."""
    record = ArrayRecord()
    for name, state in states.items():
        for key, array in ArrayRecord(state).items():
            record[f"{name}{SEP}{key}"] = array
    return record


def split_arrays(arrays: ArrayRecord) -> dict[str, ArrayRecord]:
    """The inverse of `join_arrays`, as one ArrayRecord per federation (the same Array objects)."""
    out: dict[str, ArrayRecord] = {}
    for key, array in arrays.items():
        name, _, param = key.partition(SEP)
        out.setdefault(name, ArrayRecord())[param] = array
    return out


def fresh_state(settings: Settings, federation: FederationSpec) -> State:
    """A network from scratch. Every network of a run starts from the same seeded encoder and the
    same decoder per task, so methods differ in how they train, not in their luck at init."""
    net = build_model(settings.model, federation.tasks, image_size=settings.image_size,
                      seed=stable_seed(settings.seed, "init"))
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def initial_states(settings: Settings, federations: list[FederationSpec]) -> dict[str, State]:
    """Each federation's starting network: its `init` (e.g. inherited by a MAS split), else fresh."""
    return {f.name: f.init if f.init is not None else fresh_state(settings, f) for f in federations}


class InnerStrategyLines(logging.Filter):
    """Drops the lines Flower's strategies log per federation and round ("configure_train: Sampled 4 nodes
    (out of 4)", "aggregate_train: Received 4 results and 0 failures"): the driver hands each inner
    strategy only the round's sampled nodes, so "out of 4" contradicts a federation of 6, and after a
    split every line comes once per federation. The round's own line says what was sampled from what."""

    PREFIXES = ("configure_train: Sampled", "configure_evaluate: Sampled", "%s: Received %s results",
                "aggregate_train: Received", "aggregate_evaluate: Received")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


INNER_STRATEGY_LINES = InnerStrategyLines()


class ParallelFederations(Strategy):
    """Trains the federations of one `Stage` side by side (Flower `Strategy`).

    Parameters
    ----------
    stage : the federations (name, task string, options), rounds, lr schedule and affinity rounds.
    settings : the run's settings (local training, sampling, retries, timeouts).
    aggregator : a `server-strategy` name (`fedavg`, `fedadam`, ...) or a callable returning a fresh
        Flower strategy; each federation gets its own instance. Default: `settings.server_strategy`.
        The strategy should keep `fraction_train = fraction_evaluate = 1.0`: the nodes are sampled here.
        A wrapped strategy (Flower's DP wrappers) is checked through its `.strategy`, and every strategy
        must configure one training message per sampled node without waiting for more
        (`mas_flower.strategy.sampling`); a ValueError says so before or in the first round.
    roster, ledger : shared with the other stages of a run (`MethodStrategy`); made fresh if None.
    strategies : federation -> strategy, to continue with restored state (a resumed run).
    on_round : called after every finished round with this object (checkpointing).
    """

    def __init__(self, stage: Stage, settings: Settings, aggregator: str | StrategyFactory | None = None, *,
                 roster: NodeRoster | None = None, ledger: Ledger | None = None,
                 strategies: dict[str, Strategy] | None = None,
                 on_round: Callable[[ParallelFederations], None] | None = None) -> None:
        self.stage, self.settings = stage, settings
        FLOWER_LOGGER.addFilter(INNER_STRATEGY_LINES)  # the same object each time: added once
        make = strategy_factory(settings.server_strategy if aggregator is None else aggregator, settings)
        self.strategies: dict[str, Strategy] = strategies or {f.name: make() for f in stage.federations}
        check_sampling(self.strategies, settings.clients_per_round)
        self.roster = roster or NodeRoster(settings)
        self.ledger = ledger or Ledger()
        self.on_round = on_round
        self.affinity_rounds: dict[str, list[np.ndarray]] = {}
        #: Federation -> per affinity round, every client's report (its standard error and bootstrap).
        self.affinity_reports: dict[str, list[list[AffinityReport]]] = {}
        self.val_losses: dict[str, dict[str, float]] = {}
        #: Federation -> per-task loss of the best constant prediction on the last evaluation's data.
        self.constant_losses: dict[str, dict[str, float]] = {}
        #: Federation -> task-metric sums of the last evaluation that asked for them (`task-metrics`).
        self.task_metrics: dict[str, Any] = {}
        self.record: dict[str, Any] = {}  # the history entry of the round in progress
        self._sent: dict[str, ArrayRecord] = {}
        self._sent_to: dict[str, list[int]] = {}
        self._eval_nodes: list[int] = []  # the nodes the last evaluation was sent to
        self._eval_buildings: list[str] = []  # their buildings
        self._eval_of = 0  # how many nodes the federation had then
        #: How the validation sample changed for the last evaluation ({"out": [...], "in": [...]}; {} if not).
        self.sample_change: dict[str, list[str]] = {}
        self._sampled: list[int] = []
        self.failed_nodes: set[int] = set()  # sampled nodes whose training reply was missing or rejected
        self.rejected: dict[str, list[str]] = {}  # federation -> "<building>: <why>" of its rejected train replies
        self.unavailable: set[int] = set()  # nodes Flower answered "Node Unavailable" for
        self.covered: dict[str, list[str]] = {}  # federation -> buildings its last evaluation covered
        self.uncovered: dict[str, str] = {}  # building -> why its last evaluation was left out

    @property
    def federations(self) -> list[FederationSpec]:
        return self.stage.federations

    def initial_arrays(self) -> ArrayRecord:
        """Each federation's starting network (its `init`, else a fresh seeded one), joined."""
        return join_arrays(initial_states(self.settings, self.federations))

    def lr(self, server_round: int) -> float:
        if getattr(self.stage, "restart_schedule", False):  # counted from this stage's first round
            start = self.stage.schedule_start
            return self.settings.lr_at(server_round - 1 - start, self.stage.schedule_total - start)
        return self.settings.lr_at(server_round - 1, self.stage.schedule_total)

    def summary(self) -> None:
        log(INFO, "\t├──> ParallelFederations, stage %r: %d round(s), schedule from round %d of %d",
            self.stage.phase, self.stage.rounds, self.stage.schedule_start + 1, self.stage.schedule_total)
        for fed in self.federations:
            log(INFO, "\t│\t├── %s (tasks %s): %s", fed.name, fed.tasks, type(self.strategies[fed.name]).__name__)
        log(INFO, "\t└──> %d node(s) per round, seed %d", self.settings.clients_per_round, self.settings.seed)

    # Train ---------------------------------------------------------------------------------------

    def shared_train_config(self, server_round: int, node: int) -> dict[str, Any]:
        s = self.settings
        return {**self.roster.data_config(), "server-round": server_round, "lr": self.lr(server_round),
                "local-epochs": s.local_epochs, "batch-size": s.batch_size, "gradnorm-alpha": s.gradnorm_alpha,
                "affinity-mode": s.affinity_mode, "affinity-first-epoch-only": s.affinity_first_epoch_only,
                "measure-energy": node in self.roster.remote, "energy-country": s.energy_country,
                "energy-intensity": s.energy_intensity, "precision": s.precision}

    def federation_train_config(self, fed: FederationSpec, server_round: int) -> dict[str, Any]:
        measure = fed.measure_affinity and server_round - 1 - self.stage.schedule_start < self.stage.affinity_rounds
        return {"tasks": fed.tasks, "federation": fed.name, "server-round": server_round,
                P.PROXIMAL_MU: fed.prox_mu, "weighting": fed.weighting,
                "affinity-every": self.settings.affinity_every if measure else 0}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample K distinct nodes; one train message per node carrying every federation."""
        sampled = self.roster.sample()
        self._sampled, self.failed_nodes, self.unavailable = sampled, set(), set()
        self.record = {"sampled": [self.roster.nodes[n] for n in sampled]}
        per_fed = split_arrays(arrays)
        contents = {nid: RecordDict({P.CONFIG: ConfigRecord({**dict(config),
                                                             **self.shared_train_config(server_round, nid)})})
                    for nid in sampled}
        self._sent, self._sent_to = {}, {}
        for fed in self.federations:
            self._sent[fed.name] = per_fed[fed.name]
            strategy = self.strategies[fed.name]
            messages = configured(strategy, fed.name, sampled, grid, partial(
                strategy.configure_train, server_round, per_fed[fed.name],
                ConfigRecord(self.federation_train_config(fed, server_round))), train=True)
            by_node = {m.metadata.dst_node_id: m.content for m in messages}
            self._sent_to[fed.name] = [nid for nid in sampled if nid in by_node]
            packed: dict[int, ArrayRecord] = {}
            for nid in self._sent_to[fed.name]:
                content = by_node[nid]
                fed_config = {**dict(_only(content.config_records)),
                              "seed": stable_seed(self.settings.seed, "train", fed.name, server_round - 1,
                                                  self.roster.nodes[nid])}
                contents[nid][P.record_key(P.ARRAYS, fed.name)] = _packed(_only(content.array_records), packed)
                contents[nid][P.record_key(P.CONFIG, fed.name)] = ConfigRecord(fed_config)
        return [Message(content=c, dst_node_id=nid, message_type=MessageType.TRAIN)
                for nid, c in contents.items() if len(c.config_records) > 1]

    def screen_train(self, server_round: int, replies: Iterable[Message]
                     ) -> tuple[dict[str, list[Message]], list[str]]:
        """Each federation's acceptable replies (its view of each node's reply, in roster order)
        and why the others were left out."""
        by_node = {m.metadata.src_node_id: m for m in replies}
        accepted: dict[str, list[Message]] = {}
        failed: list[str] = []
        self.rejected = {}
        for fed in self.federations:
            accepted[fed.name] = []
            self.rejected[fed.name] = []
            for nid in self._sent_to[fed.name]:
                reply = by_node.get(nid)
                view, reason = _screened(reply, fed.name, lambda v, fed=fed: reject_train_reply(
                    v, self._sent[fed.name], fed.tasks, self.lr(server_round)), sent=self._sent[fed.name])
                if reason is None:
                    accepted[fed.name].append(view)
                else:
                    failed.append(f"{self.roster.nodes[nid]} ({fed.name}): {reason}")
                    self.rejected[fed.name].append(f"{self.roster.nodes[nid]}: {reason}")
                    self.failed_nodes.add(nid)
                    if membership.unavailable(reply):
                        self.unavailable.add(nid)
        return accepted, failed

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Every federation's new network from its own strategy, or (None, None) when some federation
        has fewer than `min-replies` acceptable replies (nothing is aggregated then)."""
        replies = list(replies)
        accepted, failed = self.screen_train(server_round, replies)
        self.record["failed"] = failed
        if failed:
            log(WARNING, "round %d: rejected or missing replies: %s", server_round, "; ".join(failed))
        short = {f: len(a) for f, a in accepted.items() if len(a) < self.settings.min_replies}
        if short:
            self.record["short"] = short
            return None, None
        self._book(replies, accepted)
        joined, metrics = ArrayRecord(), MetricRecord()
        self.record["federations"] = {}
        for fed in self.federations:
            ok = accepted[fed.name]
            arrays, fed_metrics = self.strategies[fed.name].aggregate_train(server_round, ok)
            if arrays is not None and self.settings.bn_statistics == "average":
                arrays = averaged_statistics(arrays, ok)
            check_aggregate(arrays, self._sent[fed.name], federation=fed.name, strategy=self.strategies[fed.name],
                            server_round=server_round)
            for key, array in _like(arrays, self._sent[fed.name]).items():
                joined[f"{fed.name}{SEP}{key}"] = array
            entry: dict[str, Any] = {"train_loss": _losses(fed_metrics, fed.tasks),
                                     "train_buildings": [self.roster.nodes[m.metadata.src_node_id] for m in ok]}
            matrix = _affinity(ok, len(fed.tasks))
            if matrix is not None:
                entry["affinity"] = matrix.tolist()
                self.affinity_rounds.setdefault(fed.name, []).append(matrix)
                self.affinity_reports.setdefault(fed.name, []).append(_affinity_reports(ok, len(fed.tasks)))
            self.record["federations"][fed.name] = entry
            for key, value in entry["train_loss"].items():
                metrics[f"{fed.name}{SEP}{P.loss_key(key)}"] = value
        return joined, metrics

    def _book(self, replies: list[Message], accepted: dict[str, list[Message]]) -> None:
        """Client training time of accepted work; energy of every node that answered."""
        for fed in self.federations:
            book_train(self.ledger.accounts, self.settings, fed, accepted[fed.name])
        for views in accepted.values():
            seconds = sum(float(m.content[P.METRICS][P.TRAIN_SECONDS]) for m in views)
            self.ledger.client_train_seconds += seconds
            self.record["client_train_seconds"] = self.record.get("client_train_seconds", 0.0) + seconds
            self.ledger.precisions.update("bf16" if int(m.content[P.METRICS].get(P.BF16, 0)) else "fp32"
                                          for m in views)
        for reply in replies:
            if reply.has_error() or P.METRICS not in reply.content.metric_records:
                continue
            node = reply.content.metric_records[P.METRICS]
            self.ledger.remote_energy_kwh += float(node.get(P.ENERGY_KWH, 0.0))
            self.ledger.remote_co2_g += float(node.get(P.CO2_G, 0.0))
            self.ledger.remote_estimated |= bool(node.get(P.ENERGY_ESTIMATED, 0))

    # Evaluate ------------------------------------------------------------------------------------

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """One evaluate message per node that evaluates, carrying every federation; `config["split"]`
        names the split (`val` by default, `test`). `val`: the nodes of the run's validation sample
        (`validation-nodes`, `NodeRoster.validators`; every node when 0 or at least the federation's size);
        any other split (the final `test`): every node."""
        split = str(dict(config).get("split", "val"))
        if split == "val":
            first = self.roster.validation_sample is None
            nodes, self.sample_change = self.roster.validators()
            if first and len(nodes) < len(self.roster.nodes):
                log(INFO, "validation: a fixed sample of %d of the %d nodes validates (validation-nodes=%d, drawn "
                    "from seed %d): each validation loss is an estimate over them; the final test covers every node",
                    len(nodes), len(self.roster.nodes), self.settings.validation_nodes, self.settings.seed)
            if self.sample_change:
                log(INFO, "validation sample (validation-nodes=%d): %s left it, %s drawn into it",
                    self.settings.validation_nodes, ", ".join(self.sample_change["out"]) or "none",
                    ", ".join(self.sample_change["in"]) or "none")
        else:
            nodes, self.sample_change = self.roster.ordered(), {}
        self._eval_nodes, self._eval_of = nodes, len(self.roster.nodes)
        self._eval_buildings = [self.roster.nodes[nid] for nid in nodes]
        shared = {**self.roster.data_config(), "split": "val", "batch-size": self.settings.eval_batch_size,
                  "precision": self.settings.precision, **dict(config)}
        contents = {nid: RecordDict({P.CONFIG: ConfigRecord(shared)}) for nid in nodes}
        per_fed = split_arrays(arrays)
        self._sent_to = {}
        for fed in self.federations:
            strategy = self.strategies[fed.name]
            messages = configured(strategy, fed.name, nodes, grid, partial(
                strategy.configure_evaluate, server_round, per_fed[fed.name],
                ConfigRecord({"tasks": fed.tasks, "federation": fed.name, **self._constants(fed.tasks)})), train=False)
            by_node = {m.metadata.dst_node_id: m.content for m in messages}
            self._sent_to[fed.name] = [nid for nid in nodes if nid in by_node]
            packed: dict[int, ArrayRecord] = {}
            for nid in self._sent_to[fed.name]:
                contents[nid][P.record_key(P.ARRAYS, fed.name)] = _packed(_only(by_node[nid].array_records), packed)
                contents[nid][P.record_key(P.CONFIG, fed.name)] = _only(by_node[nid].config_records)
        self._eval_split = split
        return [Message(content=c, dst_node_id=nid, message_type=MessageType.EVALUATE)
                for nid, c in contents.items() if len(c.config_records) > 1]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Per-task losses of every federation, each aggregated by its own strategy (by default
        weighted by examples); raises RoundFailed when no node evaluated some federation."""
        by_node = {m.metadata.src_node_id: m for m in replies}
        metrics = MetricRecord()
        self.val_losses, self.covered, self.uncovered, self.unavailable = {}, {}, {}, set()
        self.constant_losses = {}
        self.task_metrics = {}
        for fed in self.federations:
            good, reasons = [], []
            for nid in self._sent_to[fed.name]:
                reply = by_node.get(nid)
                view, reason = _screened(reply, fed.name, lambda v, fed=fed: reject_evaluate_reply(v, fed.tasks))
                if reason is None:
                    good.append(view)
                else:
                    log(WARNING, "%s of %s on %s rejected: %s", self._eval_split, fed.name,
                        self.roster.nodes[nid], reason)
                    self.uncovered.setdefault(self.roster.nodes[nid], reason)
                    reasons.append(f"{self.roster.nodes[nid]}: {reason}")
                    if membership.unavailable(reply):
                        self.unavailable.add(nid)
            self.covered[fed.name] = [self.roster.nodes[m.metadata.src_node_id] for m in good]
            if not good and reasons and all(non_finite(r) for r in reasons):
                raise DivergedError(f"federation {fed.name!r}, round {server_round}: the network aggregated by its "
                                    f"{strategy_name(self.strategies[fed.name])} gives a non-finite {self._eval_split} "
                                    f"loss on every node ({'; '.join(reasons[:3])}): it diverged. {LOWER}, and "
                                    f"{NEW_RUN}")
            if not good:
                raise RoundFailed(f"no node evaluated federation {fed.name!r} on {self._eval_split}")
            book_eval(self.ledger.accounts, self.settings, fed, good)
            if (floor := _constant_losses(good, fed.tasks)) is not None:
                self.constant_losses[fed.name] = floor
            good, sums = take_metric_sums(good)
            if sums is not None:
                self.task_metrics[fed.name] = sums
            self.val_losses[fed.name] = _losses(self.strategies[fed.name].aggregate_evaluate(server_round, good),
                                                fed.tasks)
            for key, value in self.val_losses[fed.name].items():
                metrics[f"{fed.name}{SEP}{P.loss_key(key)}"] = value
        return metrics

    # Driving -------------------------------------------------------------------------------------

    def evaluate(self, grid: Grid, server_round: int, arrays: ArrayRecord, split: str) -> dict[str, dict[str, float]]:
        """Every federation's per-task losses (federation -> task letter -> mean loss per example) on `split`
        of the nodes that evaluate it (Flower's current view of them): the validation sample for `val`
        (`configure_evaluate`), every node otherwise. `covered` names the buildings each federation's losses
        come from, `validation_record` says how many, and `task_metrics` holds the sums of its task metrics
        (cheap beside the forward passes). Raises RoundFailed when no node evaluated some federation,
        DivergedError when every node's loss of one was non-finite."""
        membership.refresh(self.roster, grid, server_round, count=False)
        messages = self.configure_evaluate(server_round, arrays,
                                           ConfigRecord({"split": split, P.TASK_METRICS: True}), grid)
        replies = exchange(grid, [(m.metadata.dst_node_id, m) for m in messages], timeout=self.timeout())
        count_exchange(self.ledger.accounts, messages, replies.values())
        try:
            self.aggregate_evaluate(server_round, replies.values())
        finally:
            membership.forget(self.roster, self.unavailable)
        return self.val_losses

    def validation_record(self, federation: str) -> dict[str, Any]:
        """What the history records beside a federation's validation loss, constant-size whatever N:
        `val_nodes` (buildings whose replies the loss averages), `val_of` (the federation's nodes then),
        `val_estimate` (True when `val_nodes < val_of`: a sample, by `validation-nodes` or by replies left
        out) and, only when some were, `val_missing` (the buildings the validation was sent to whose reply
        was left out: none in a healthy round, at most the nodes it was sent to)."""
        covered = set(self.covered[federation])
        missing = [b for b in self._eval_buildings if b not in covered]
        out: dict[str, Any] = {"val_nodes": len(covered), "val_of": self._eval_of,
                               "val_estimate": len(covered) < self._eval_of}
        if missing:
            out["val_missing"] = missing
        return out

    def _constants(self, tasks: str) -> dict[str, list[float]]:
        """Evaluate config entries of the best constant of each task (none before discovery)."""
        return {P.constant_key(t): self.roster.constants[t] for t in tasks if t in self.roster.constants}

    def timeout(self) -> float | None:
        return self.settings.reply_timeout if self.settings.reply_timeout > 0 else None

    def train_round(self, grid: Grid, server_round: int, arrays: ArrayRecord,
                    config: ConfigRecord | None = None) -> tuple[ArrayRecord, MetricRecord]:
        """One round for every federation, resampled and retried while too few replies are valid."""
        s = self.settings
        diverging = True  # every attempt fell short only because local training gave non-finite values
        for attempt in range(s.round_retries + 1):
            membership.refresh(self.roster, grid, server_round)
            messages = self.configure_train(server_round, arrays, config or ConfigRecord(), grid)
            replies = exchange(grid, [(m.metadata.dst_node_id, m) for m in messages], timeout=self.timeout())
            count_exchange(self.ledger.accounts, messages, replies.values())
            new, metrics = self.aggregate_train(server_round, replies.values())
            membership.record_exchange(self.roster, self._sampled, self.failed_nodes, self.unavailable,
                                       server_round)
            if new is not None:
                return new, metrics
            log(WARNING, "round %d attempt %d/%d: too few valid replies %s (min-replies=%d)", server_round,
                attempt + 1, s.round_retries + 1, self.record["short"], s.min_replies)
            reasons = [r for name in self.record["short"] for r in self.rejected[name]]
            diverging &= bool(reasons) and all(non_finite(r) for r in reasons)
        if diverging:
            raise DivergedError(f"round {server_round}: the local training of federation(s) "
                                f"{', '.join(map(repr, self.record['short']))} gave non-finite values on every node "
                                f"whose reply was rejected, in each of {s.round_retries + 1} attempt(s) "
                                f"({'; '.join(self.record['failed'][:3])}): it diverged. {LOWER}, and {NEW_RUN}")
        raise RoundFailed(f"round {server_round}: fewer than min-replies={s.min_replies} valid replies after "
                          f"{s.round_retries + 1} attempts ({'; '.join(self.record['failed'])})")

    def evaluates_in(self, index: int) -> bool:
        """Whether round `index` (0-based in the stage) validates: every `eval-every`, and the last."""
        return (index + 1) % self.settings.eval_every == 0 or index == self.stage.rounds - 1

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int | None = None,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              first_round: int = 0) -> Result:
        """Run the stage's rounds (from `first_round`, 0-based, when resuming) as Flower's `start`
        does, with our guarantees: seeded sampling of K distinct nodes, rejected bad replies,
        retried rounds, `on_round` after each round (checkpoints). Discovers the nodes if nobody has.
        `num_rounds` and `timeout` default to the stage's rounds and `reply-timeout`."""
        if not self.roster.nodes:
            self.roster.discover(grid)
        log(INFO, "Starting %s, stage %r:", type(self).__name__, self.stage.phase)
        self.summary()
        arrays = initial_arrays if initial_arrays is not None else self.initial_arrays()
        result = Result(arrays=arrays)
        rounds = self.stage.rounds if num_rounds is None else num_rounds
        for index in range(first_round, rounds):
            server_round = self.stage.schedule_start + index + 1
            t0, spent = time.monotonic(), self.ledger.accounts.snapshot()
            arrays, train_metrics = self.train_round(grid, server_round, arrays, train_config)
            result.arrays, result.train_metrics_clientapp[server_round] = arrays, train_metrics
            if self.evaluates_in(index):
                self.evaluate(grid, server_round, arrays, str((evaluate_config or {}).get("split", "val")))
                result.evaluate_metrics_clientapp[server_round] = MetricRecord(
                    {f"{n}{SEP}{P.loss_key(t)}": v for n, losses in self.val_losses.items() for t, v in losses.items()})
                for name, entry in self.record["federations"].items():
                    entry["val_loss"] = self.val_losses[name]
                    entry.update(self.validation_record(name))
                    if name in self.constant_losses:
                        entry["val_skill"] = skills(self.val_losses[name], self.constant_losses[name])
                    if name in self.task_metrics:
                        entry["val_metrics"] = self.task_metrics[name].compute()
                if self.sample_change:
                    self.record["val_sample_changed"] = self.sample_change
                watch_validation(self.ledger.history, self.record, phase=self.stage.phase, server_round=server_round,
                                 strategies=self.strategies)
            if evaluate_fn is not None and (res := evaluate_fn(server_round, arrays)) is not None:
                result.evaluate_metrics_serverapp[server_round] = res
            self.record.pop("short", None)
            self.record.update(round=server_round, phase=self.stage.phase, lr=self.lr(server_round),
                               seconds=time.monotonic() - t0, **self.ledger.accounts.since(spent))
            self.ledger.history.append(self.record)
            self.arrays = arrays
            if self.on_round is not None:
                self.on_round(self)
        self.arrays = result.arrays
        return result


def _only(records: Any) -> Any:
    """The single record of a RecordDict's typed view (a Flower strategy's message holds one of each)."""
    (value,) = records.values()
    return value


def _packed(record: ArrayRecord, done: dict[int, ArrayRecord]) -> ArrayRecord:
    """`wire.pack(record)`, once per record object: a Flower strategy usually gives every node the same
    one. `done` lives while the strategy's messages do, so no id is reused meanwhile."""
    if id(record) not in done:
        done[id(record)] = wire.pack(record)
    return done[id(record)]


def _screened(reply: Message | None, federation: str, reject: Callable[[Message], str | None], *,
              sent: ArrayRecord | None = None) -> tuple[Message | None, str | None]:
    """A node's reply cut to one federation (`_view`) and why it must not be aggregated (None: it may)."""
    if reply is None:
        return None, "no reply in time"
    if reply.has_error():
        return None, f"client error: {reply.error.reason}"
    try:
        view = _view(reply, federation, sent=sent)
    except wire.LayoutMismatch as err:
        return None, str(err)
    return view, reject(view)


def _view(reply: Message, federation: str, *, sent: ArrayRecord | None = None) -> Message:
    """One federation's part of a node's reply, shaped as a Flower strategy expects a reply:
    one plain ArrayRecord (train replies: unpacked by the layout of `sent`) and one MetricRecord,
    under our standard keys."""
    content = RecordDict()
    if sent is not None and P.record_key(P.ARRAYS, federation) in reply.content.array_records:
        content[P.ARRAYS] = wire.unpacked(reply.content[P.record_key(P.ARRAYS, federation)], sent,
                                          what=f"federation {federation!r}")
    if P.record_key(P.METRICS, federation) in reply.content.metric_records:
        content[P.METRICS] = reply.content[P.record_key(P.METRICS, federation)]
    return Message(content=content, metadata=copy.copy(reply.metadata))


def _constant_losses(replies: list[Message], tasks: str) -> dict[str, float] | None:
    """Example-weighted mean loss of the best constant per task (as the losses are weighted by
    default), or None unless every reply reported it for every task."""
    total, sums = 0, dict.fromkeys(tasks, 0.0)
    for m in replies:
        metrics = m.content[P.METRICS]
        if any(P.constant_loss_key(t) not in metrics for t in tasks):
            return None
        n = int(metrics[P.NUM_EXAMPLES])
        total += n
        for t in tasks:
            sums[t] += n * float(metrics[P.constant_loss_key(t)])
    return {t: v / total for t, v in sums.items()} if total > 0 else None


def _losses(metrics: Any, tasks: str) -> dict[str, float]:
    return {t: float(metrics[P.loss_key(t)]) for t in tasks}


def _affinity(replies: list[Message], n: int) -> np.ndarray | None:
    """Lookahead-count-weighted mean of the clients' affinity matrices (docs/design.md, section "Lookahead affinity"):
    Z = Σ_c n_c Z_c / Σ_c n_c, with n_c the number of lookahead batches of client c."""
    total, count = np.zeros((n, n)), 0
    for m in replies:
        metrics = m.content[P.METRICS]
        if P.AFFINITY in metrics and int(metrics[P.AFFINITY_COUNT]) > 0:
            c = int(metrics[P.AFFINITY_COUNT])
            total += c * np.asarray(metrics[P.AFFINITY], dtype=float).reshape(n, n)
            count += c
    return total / count if count else None


def _affinity_reports(replies: list[Message], n: int) -> list[AffinityReport]:
    """Each client's lookahead report of a round (count, mean matrix, sum of squares if sent)."""
    reports = []
    for m in replies:
        metrics = m.content[P.METRICS]
        if P.AFFINITY in metrics and int(metrics[P.AFFINITY_COUNT]) > 0:
            squares = metrics.get(P.AFFINITY_SQUARES)
            reports.append(AffinityReport(
                int(metrics[P.AFFINITY_COUNT]), np.asarray(metrics[P.AFFINITY], dtype=float).reshape(n, n),
                None if squares is None else np.asarray(squares, dtype=float).reshape(n, n)))
    return reports


def _like(new: ArrayRecord, old: ArrayRecord) -> ArrayRecord:
    """Aggregated arrays come back as float; give every entry the dtype it was sent with (BN counters
    are ints, truncated towards zero as torch's `.to` does)."""
    out = ArrayRecord()
    for key, array in new.items():
        value = array.numpy()
        if key in old and value.dtype != old[key].numpy().dtype:
            value = value.astype(old[key].numpy().dtype)
        out[key] = Array(value.copy(order="C"))
    return out
