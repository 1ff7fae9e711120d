"""`ParallelFederations`: a Flower Strategy training several federations (one network per task
group) in the same rounds, on the same sampled nodes, each aggregated by its own Flower strategy.

Inside a stage the networks have one form, `Networks` (federation -> ArrayRecord). Flower's Strategy
methods take and return one ArrayRecord, so at that boundary only they are joined as
`<federation>/<parameter>` (`join_arrays`, `split_arrays`). Each round samples K distinct nodes from a
seeded generator (`NodeRoster`), hands each federation's Flower strategy (FedAvg, FedAdam, ...) only those
nodes, and merges what the strategies configure into one message per node carrying every federation
(`protocol.py`: the instructions, and each network packed by `wire.py`). Each federation's part of the
replies is screened (`replies.py`) and its accepted replies go to its own strategy's
`aggregate_train`, so server-optimiser state is kept per network. What the strategy returns is checked too
(`divergence.py`): a broken or diverged network stops the run with `DivergedError` before its round is
checkpointed, and a validation loss that explodes is named. Validation goes to the run's fixed sample of
`validation-nodes` buildings (`NodeRoster.validators`), the final test to every node; each validation
loss is recorded with the number of nodes behind it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import FLOWER_LOGGER, log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from mas_flower.constant import skills
from mas_flower.methods.base import FederationSpec, Stage
from mas_flower.settings import Settings
from mas_flower.splitting.stability import AffinityReport
from mas_flower.strategy import protocol as P
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
from mas_flower.strategy.ledger import Ledger, NetworkRound, RoundRecord
from mas_flower.strategy.networks import (
    SEP,
    Networks,
    initial_states,
    join_arrays,
    like_sent,
    packed_once,
    split_arrays,
)
from mas_flower.strategy.replies import (
    affinity_mean,
    affinity_reports,
    constant_losses,
    non_finite,
    reject_evaluate_reply,
    reject_train_reply,
    screen,
    task_losses,
)
from mas_flower.strategy.roster import NodeRoster, RoundFailed, node_unavailable, stable_seed
from mas_flower.strategy.sampling import check_sampling, configured


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


@dataclass
class TrainAttempt:
    """One attempt at a round's training exchange: what went where, and which replies failed."""

    record: RoundRecord
    sampled: list[int]
    #: The network each federation sent (unpacked), to check and unpack the replies by.
    sent: Networks = field(default_factory=dict)
    #: Federation -> the nodes its strategy configured a message for, in roster order.
    sent_to: dict[str, list[int]] = field(default_factory=dict)
    #: Sampled nodes whose reply was missing or rejected for some federation.
    failed_nodes: set[int] = field(default_factory=set)
    #: Federation -> "<building>: <why>" of its rejected replies.
    rejected: dict[str, list[str]] = field(default_factory=dict)
    #: Nodes Flower answered "Node Unavailable" for.
    unavailable: set[int] = field(default_factory=set)


@dataclass
class Evaluation:
    """One evaluation exchange: where it went (`split`, the buildings, how many nodes the federation had)
    and, once aggregated, what it measured per federation."""

    split: str
    buildings: list[str]
    of: int
    #: How the validation sample changed for it ({"out": [...], "in": [...]}; {} if not).
    sample_change: dict[str, list[str]]
    sent_to: dict[str, list[int]] = field(default_factory=dict)
    #: Federation -> task letter -> mean loss per example.
    losses: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Federation -> the buildings its losses come from; building -> why its reply was left out.
    covered: dict[str, list[str]] = field(default_factory=dict)
    uncovered: dict[str, str] = field(default_factory=dict)
    unavailable: set[int] = field(default_factory=set)
    #: Federation -> per-task loss of the best constant prediction on the same data.
    constant_losses: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Federation -> task-metric sums (`mas_flower.metrics.TaskMetrics`).
    task_metrics: dict[str, Any] = field(default_factory=dict)

    def cleared(self) -> Evaluation:
        """The same exchange with nothing measured yet (before aggregating its replies)."""
        return Evaluation(self.split, self.buildings, self.of, self.sample_change, self.sent_to)

    def validation_record(self, federation: str) -> dict[str, Any]:
        """What the history records beside a federation's validation loss, constant-size whatever N:
        `val_nodes` (buildings whose replies the loss averages), `val_of` (the federation's nodes then),
        `val_estimate` (True when `val_nodes < val_of`: a sample, by `validation-nodes` or by replies left
        out) and, only when some were, `val_missing` (the buildings the validation was sent to whose reply
        was left out: none in a healthy round, at most the nodes it was sent to)."""
        covered = set(self.covered[federation])
        missing = [b for b in self.buildings if b not in covered]
        out: dict[str, Any] = {"val_nodes": len(covered), "val_of": self.of, "val_estimate": len(covered) < self.of}
        if missing:
            out["val_missing"] = missing
        return out


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

    State: `networks` (after each round), `attempt` (the training exchange in progress), `evaluation`
    (the last evaluation exchange), and for the whole stage `affinity_rounds` and `affinity_reports`.
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
        #: Federation -> the mean affinity of each affinity round so far.
        self.affinity_rounds: dict[str, list[np.ndarray]] = {}
        #: Federation -> per affinity round, every client's report (its standard error and bootstrap).
        self.affinity_reports: dict[str, list[list[AffinityReport]]] = {}
        self.networks: Networks = {}
        self.attempt: TrainAttempt | None = None
        self.evaluation: Evaluation | None = None

    @property
    def federations(self) -> list[FederationSpec]:
        return self.stage.federations

    def initial_networks(self) -> Networks:
        """Each federation's starting network (its `init`, else a fresh seeded one)."""
        return {name: ArrayRecord(state) for name, state in initial_states(self.settings, self.federations).items()}

    def lr(self, server_round: int) -> float:
        if self.stage.restart_schedule:  # counted from this stage's first round
            start = self.stage.schedule_start
            return self.settings.lr_at(server_round - 1 - start, self.stage.schedule_total - start)
        return self.settings.lr_at(server_round - 1, self.stage.schedule_total)

    def timeout(self) -> float | None:
        return self.settings.reply_timeout if self.settings.reply_timeout > 0 else None

    def summary(self) -> None:
        log(INFO, "\t├──> ParallelFederations, stage %r: %d round(s), schedule from round %d of %d",
            self.stage.phase, self.stage.rounds, self.stage.schedule_start + 1, self.stage.schedule_total)
        for fed in self.federations:
            log(INFO, "\t│\t├── %s (tasks %s): %s", fed.name, fed.tasks, type(self.strategies[fed.name]).__name__)
        log(INFO, "\t└──> %d node(s) per round, seed %d", self.settings.clients_per_round, self.settings.seed)

    # Flower's Strategy interface: one joined ArrayRecord in and out ---------------------------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample K distinct nodes; one train message per node carrying every federation."""
        return self.train_messages(server_round, split_arrays(arrays), config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Every federation's new network from its own strategy, or (None, None) when some federation
        has fewer than `min-replies` acceptable replies (nothing is aggregated then)."""
        networks, metrics = self.aggregate(server_round, replies)
        return (None, None) if networks is None else (join_arrays(networks), metrics)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """One evaluate message per node that evaluates, carrying every federation; `config["split"]`
        names the split (`val` by default, `test`); `config["task-metrics"]` asks for the metrics' sums."""
        config = dict(config)
        return self.evaluate_messages(server_round, split_arrays(arrays), str(config.pop("split", "val")),
                                      bool(config.pop(P.key_of(P.EvaluateInstruction, "task_metrics"), False)),
                                      grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Per-task losses of every federation, each aggregated by its own strategy (by default
        weighted by examples), keyed `<federation>/loss-<letter>`; raises RoundFailed when no node
        evaluated some federation."""
        return _loss_metrics(self.measure(server_round, replies))

    # Train ---------------------------------------------------------------------------------------

    def train_instruction(self, server_round: int, node: int) -> P.TrainInstruction:
        s = self.settings
        return P.TrainInstruction(
            **self.roster.data_instruction(), server_round=server_round, lr=self.lr(server_round),
            local_epochs=s.local_epochs, batch_size=s.batch_size, gradnorm_alpha=s.gradnorm_alpha,
            affinity_mode=s.affinity_mode, affinity_first_epoch_only=s.affinity_first_epoch_only,
            precision=s.precision, measure_energy=node in self.roster.remote, energy_country=s.energy_country,
            energy_intensity=s.energy_intensity)

    def federation_train(self, fed: FederationSpec, server_round: int) -> P.FederationTrain:
        measure = fed.measure_affinity and server_round - 1 - self.stage.schedule_start < self.stage.affinity_rounds
        return P.FederationTrain(federation=fed.name, tasks=fed.tasks, weighting=fed.weighting,
                                 affinity_every=self.settings.affinity_every if measure else 0,
                                 proximal_mu=fed.prox_mu)

    def train_messages(self, server_round: int, networks: Networks, config: ConfigRecord | None,
                       grid: Grid) -> list[Message]:
        """Sample the round's nodes (a new `attempt`) and build one train message per node: the shared
        `TrainInstruction` (plus any caller `config`), and per federation its strategy's message content,
        as `FederationTrain` with this node's seed, and its network packed."""
        sampled = self.roster.sample()
        attempt = self.attempt = TrainAttempt(RoundRecord([self.roster.nodes[n] for n in sampled]), sampled)
        contents = {nid: RecordDict({P.CONFIG: ConfigRecord(
            {**dict(config or {}), **self.train_instruction(server_round, nid).to_record()})}) for nid in sampled}
        for fed in self.federations:
            attempt.sent[fed.name] = networks[fed.name]
            strategy = self.strategies[fed.name]
            mine = ConfigRecord(self.federation_train(fed, server_round).to_record())
            by_node = self._configured(fed, sampled, grid, partial(
                strategy.configure_train, server_round, networks[fed.name], mine), train=True)
            attempt.sent_to[fed.name] = list(by_node)
            packed: dict[int, ArrayRecord] = {}
            for nid in by_node:
                theirs = dict(_only(by_node[nid].config_records))  # ours, as the strategy passed it on
                seed = stable_seed(self.settings.seed, "train", fed.name, server_round - 1, self.roster.nodes[nid])
                instruction = replace(P.FederationTrain.from_record(theirs), seed=seed)
                contents[nid][P.record_key(P.ARRAYS, fed.name)] = packed_once(_only(by_node[nid].array_records), packed)
                contents[nid][P.record_key(P.CONFIG, fed.name)] = ConfigRecord({**theirs, **instruction.to_record()})
        return [Message(content=c, dst_node_id=nid, message_type=MessageType.TRAIN)
                for nid, c in contents.items() if len(c.config_records) > 1]

    def _configured(self, fed: FederationSpec, nodes: list[int], grid: Grid,
                    configure: Callable[[Grid], Iterable[Message]], *, train: bool) -> dict[int, RecordDict]:
        """What `fed`'s strategy configured (`sampling.configured`), node id -> content, in the order of
        `nodes`, for the nodes it configured a message for."""
        messages = configured(self.strategies[fed.name], fed.name, nodes, grid, configure, train=train)
        contents = {m.metadata.dst_node_id: m.content for m in messages}
        return {nid: contents[nid] for nid in nodes if nid in contents}

    def screen_train(self, server_round: int, replies: Iterable[Message]) -> tuple[dict[str, list[Message]], list[str]]:
        """Each federation's acceptable replies (its view of each node's reply, in roster order)
        and why the others were left out (also noted in `attempt`)."""
        attempt = self._attempt()
        by_node = {m.metadata.src_node_id: m for m in replies}
        accepted: dict[str, list[Message]] = {}
        failed: list[str] = []
        for fed in self.federations:
            accepted[fed.name], attempt.rejected[fed.name] = [], []
            sent = attempt.sent[fed.name]
            for nid in attempt.sent_to[fed.name]:
                reply = by_node.get(nid)
                view, reason = screen(reply, fed.name, lambda v, fed=fed, sent=sent: reject_train_reply(
                    v, sent, fed.tasks, self.lr(server_round)), sent=sent)
                if reason is None:
                    accepted[fed.name].append(view)
                    continue
                failed.append(f"{self.roster.nodes[nid]} ({fed.name}): {reason}")
                attempt.rejected[fed.name].append(f"{self.roster.nodes[nid]}: {reason}")
                attempt.failed_nodes.add(nid)
                if node_unavailable(reply):
                    attempt.unavailable.add(nid)
        return accepted, failed

    def aggregate(self, server_round: int, replies: Iterable[Message]) -> tuple[Networks | None, MetricRecord]:
        """`aggregate_train` on `Networks`: (None, empty metrics) when some federation is short."""
        replies = list(replies)
        accepted, failed = self.screen_train(server_round, replies)
        record = self._attempt().record
        record.failed = failed
        if failed:
            log(WARNING, "round %d: rejected or missing replies: %s", server_round, "; ".join(failed))
        record.short = {f: len(a) for f, a in accepted.items() if len(a) < self.settings.min_replies}
        if record.short:
            return None, MetricRecord()
        self._book(replies, accepted)
        networks: Networks = {}
        for fed in self.federations:
            ok, sent, strategy = accepted[fed.name], self._attempt().sent[fed.name], self.strategies[fed.name]
            arrays, fed_metrics = strategy.aggregate_train(server_round, ok)
            if arrays is not None and self.settings.bn_statistics == "average":
                arrays = averaged_statistics(arrays, ok)
            check_aggregate(arrays, sent, federation=fed.name, strategy=strategy, server_round=server_round)
            networks[fed.name] = like_sent(arrays, sent)
            net = NetworkRound(train_loss=task_losses(fed_metrics, fed.tasks),
                               train_buildings=[self.roster.nodes[m.metadata.src_node_id] for m in ok])
            matrix = affinity_mean(ok, len(fed.tasks))
            if matrix is not None:
                net.affinity = matrix.tolist()
                self.affinity_rounds.setdefault(fed.name, []).append(matrix)
                self.affinity_reports.setdefault(fed.name, []).append(affinity_reports(ok, len(fed.tasks)))
            record.federations[fed.name] = net
        return networks, _loss_metrics({name: net.train_loss for name, net in record.federations.items()})

    def _book(self, replies: list[Message], accepted: dict[str, list[Message]]) -> None:
        """Client training time of accepted work; energy of every node that answered."""
        record = self._attempt().record
        for fed in self.federations:
            book_train(self.ledger.accounts, self.settings, fed, accepted[fed.name])
        for views in accepted.values():
            seconds = sum(float(m.content[P.METRICS][P.TRAIN_SECONDS]) for m in views)
            self.ledger.client_train_seconds += seconds
            record.client_train_seconds += seconds
            self.ledger.precisions.update("bf16" if int(m.content[P.METRICS].get(P.BF16, 0)) else "fp32"
                                          for m in views)
        for reply in replies:
            if reply.has_error() or P.METRICS not in reply.content.metric_records:
                continue
            node = reply.content.metric_records[P.METRICS]
            self.ledger.remote_energy_kwh += float(node.get(P.ENERGY_KWH, 0.0))
            self.ledger.remote_co2_g += float(node.get(P.CO2_G, 0.0))
            self.ledger.remote_estimated |= bool(node.get(P.ENERGY_ESTIMATED, 0))

    def _attempt(self) -> TrainAttempt:
        if self.attempt is None:
            raise RuntimeError("no training exchange was configured: call configure_train first")
        return self.attempt

    # Evaluate ------------------------------------------------------------------------------------

    def evaluation_nodes(self, split: str) -> tuple[list[int], dict[str, list[str]]]:
        """The nodes that evaluate `split` and how the validation sample changed: for `val`, the run's
        validation sample (`validation-nodes`, `NodeRoster.validators`; every node when 0 or at least the
        federation's size); for any other split (the final `test`), every node."""
        if split != "val":
            return self.roster.ordered(), {}
        first = self.roster.validation_sample is None
        nodes, change = self.roster.validators()
        if first and len(nodes) < len(self.roster.nodes):
            log(INFO, "validation: a fixed sample of %d of the %d nodes validates (validation-nodes=%d, drawn "
                "from seed %d): each validation loss is an estimate over them; the final test covers every node",
                len(nodes), len(self.roster.nodes), self.settings.validation_nodes, self.settings.seed)
        if change:
            log(INFO, "validation sample (validation-nodes=%d): %s left it, %s drawn into it",
                self.settings.validation_nodes, ", ".join(change["out"]) or "none", ", ".join(change["in"]) or "none")
        return nodes, change

    def evaluate_messages(self, server_round: int, networks: Networks, split: str, task_metrics: bool,
                          grid: Grid) -> list[Message]:
        """A new `evaluation` of `split`: one evaluate message per node that evaluates it, the shared
        `EvaluateInstruction` and per federation its strategy's content as `FederationEvaluate`."""
        nodes, change = self.evaluation_nodes(split)
        evaluation = self.evaluation = Evaluation(split, [self.roster.nodes[nid] for nid in nodes],
                                                  len(self.roster.nodes), change)
        shared = P.EvaluateInstruction(**self.roster.data_instruction(), split=split,
                                       batch_size=self.settings.eval_batch_size, precision=self.settings.precision,
                                       task_metrics=task_metrics).to_record()
        contents = {nid: RecordDict({P.CONFIG: ConfigRecord(shared)}) for nid in nodes}
        for fed in self.federations:
            strategy = self.strategies[fed.name]
            constants = {t: self.roster.constants[t] for t in fed.tasks if t in self.roster.constants}
            mine = ConfigRecord(P.FederationEvaluate(fed.name, fed.tasks, constants).to_record())
            by_node = self._configured(fed, nodes, grid, partial(
                strategy.configure_evaluate, server_round, networks[fed.name], mine), train=False)
            evaluation.sent_to[fed.name] = list(by_node)
            packed: dict[int, ArrayRecord] = {}
            for nid in by_node:
                contents[nid][P.record_key(P.ARRAYS, fed.name)] = packed_once(_only(by_node[nid].array_records), packed)
                contents[nid][P.record_key(P.CONFIG, fed.name)] = _only(by_node[nid].config_records)
        return [Message(content=c, dst_node_id=nid, message_type=MessageType.EVALUATE)
                for nid, c in contents.items() if len(c.config_records) > 1]

    def measure(self, server_round: int, replies: Iterable[Message]) -> dict[str, dict[str, float]]:
        """`aggregate_evaluate` as federation -> task letter -> loss, kept in `evaluation` with the buildings
        covered, the constant losses and the task metrics. Raises RoundFailed when no node evaluated some
        federation, DivergedError when every node's loss of one was non-finite."""
        if self.evaluation is None:
            raise RuntimeError("no evaluation was configured: call configure_evaluate first")
        ev = self.evaluation = self.evaluation.cleared()
        by_node = {m.metadata.src_node_id: m for m in replies}
        for fed in self.federations:
            good, reasons = [], []
            for nid in ev.sent_to[fed.name]:
                reply = by_node.get(nid)
                view, reason = screen(reply, fed.name, lambda v, fed=fed: reject_evaluate_reply(v, fed.tasks))
                if reason is None:
                    good.append(view)
                    continue
                log(WARNING, "%s of %s on %s rejected: %s", ev.split, fed.name, self.roster.nodes[nid], reason)
                ev.uncovered.setdefault(self.roster.nodes[nid], reason)
                reasons.append(f"{self.roster.nodes[nid]}: {reason}")
                if node_unavailable(reply):
                    ev.unavailable.add(nid)
            ev.covered[fed.name] = [self.roster.nodes[m.metadata.src_node_id] for m in good]
            if not good and reasons and all(non_finite(r) for r in reasons):
                raise DivergedError(f"federation {fed.name!r}, round {server_round}: the network aggregated by its "
                                    f"{strategy_name(self.strategies[fed.name])} gives a non-finite {ev.split} "
                                    f"loss on every node ({'; '.join(reasons[:3])}): it diverged. {LOWER}, and "
                                    f"{NEW_RUN}")
            if not good:
                raise RoundFailed(f"no node evaluated federation {fed.name!r} on {ev.split}")
            book_eval(self.ledger.accounts, self.settings, fed, good)
            if (floor := constant_losses(good, fed.tasks)) is not None:
                ev.constant_losses[fed.name] = floor
            good, sums = take_metric_sums(good)
            if sums is not None:
                ev.task_metrics[fed.name] = sums
            ev.losses[fed.name] = task_losses(self.strategies[fed.name].aggregate_evaluate(server_round, good),
                                              fed.tasks)
        return ev.losses

    # Driving -------------------------------------------------------------------------------------

    def evaluate(self, grid: Grid, server_round: int, networks: Networks, split: str) -> dict[str, dict[str, float]]:
        """Every federation's per-task losses (federation -> task letter -> mean loss per example) on `split`
        of the nodes that evaluate it (Flower's current view of them; `evaluation_nodes`), with the task
        metrics' sums. `evaluation` keeps what it covered. Raises RoundFailed when no node evaluated some
        federation, DivergedError when every node's loss of one was non-finite."""
        self.roster.refresh(grid, server_round, count=False)
        messages = self.evaluate_messages(server_round, networks, split, True, grid)
        replies = exchange(grid, [(m.metadata.dst_node_id, m) for m in messages], timeout=self.timeout())
        count_exchange(self.ledger.accounts, messages, replies.values())
        try:
            return self.measure(server_round, replies.values())
        finally:
            if self.evaluation is not None:
                self.roster.forget(self.evaluation.unavailable)

    def train_round(self, grid: Grid, server_round: int, networks: Networks,
                    config: ConfigRecord | None = None) -> tuple[Networks, MetricRecord]:
        """One round for every federation, resampled and retried while too few replies are valid."""
        s = self.settings
        diverging = True  # every attempt fell short only because local training gave non-finite values
        for attempt in range(s.round_retries + 1):
            self.roster.refresh(grid, server_round)
            messages = self.train_messages(server_round, networks, config, grid)
            replies = exchange(grid, [(m.metadata.dst_node_id, m) for m in messages], timeout=self.timeout())
            count_exchange(self.ledger.accounts, messages, replies.values())
            new, metrics = self.aggregate(server_round, replies.values())
            tried = self._attempt()
            self.roster.record_exchange(tried.sampled, tried.failed_nodes, tried.unavailable, server_round)
            if new is not None:
                return new, metrics
            log(WARNING, "round %d attempt %d/%d: too few valid replies %s (min-replies=%d)", server_round,
                attempt + 1, s.round_retries + 1, tried.record.short, s.min_replies)
            reasons = [r for name in tried.record.short for r in tried.rejected[name]]
            diverging &= bool(reasons) and all(non_finite(r) for r in reasons)
        failed = self._attempt().record.failed
        if diverging:
            raise DivergedError(f"round {server_round}: the local training of federation(s) "
                                f"{', '.join(map(repr, self._attempt().record.short))} gave non-finite values on every "
                                f"node whose reply was rejected, in each of {s.round_retries + 1} attempt(s) "
                                f"({'; '.join(failed[:3])}): it diverged. {LOWER}, and {NEW_RUN}")
        raise RoundFailed(f"round {server_round}: fewer than min-replies={s.min_replies} valid replies after "
                          f"{s.round_retries + 1} attempts ({'; '.join(failed)})")

    def evaluates_in(self, index: int) -> bool:
        """Whether round `index` (0-based in the stage) validates: every `eval-every`, and the last."""
        return (index + 1) % self.settings.eval_every == 0 or index == self.stage.rounds - 1

    def validated(self, record: RoundRecord) -> None:
        """Add the last validation to the round's record: per federation its loss, the nodes behind it,
        its skill and task metrics; and how the validation sample changed, if it did."""
        ev = self.evaluation
        assert ev is not None
        for name, net in record.federations.items():
            record.federations[name] = replace(
                net, val_loss=ev.losses[name], **ev.validation_record(name),
                val_skill=skills(ev.losses[name], ev.constant_losses[name]) if name in ev.constant_losses else None,
                val_metrics=ev.task_metrics[name].compute() if name in ev.task_metrics else None)
        record.val_sample_changed = ev.sample_change or None

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int | None = None,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Flower's `start`, as a thin adapter of `run`: `initial_arrays` (joined; default: each federation's
        starting network), `num_rounds` (default: the stage's), `train_config` (extra keys of every train
        message), `evaluate_config["split"]` (the split validated, default `val`), `evaluate_fn` (called with
        the joined networks after every round). `reply-timeout` bounds the wait for replies, so a `timeout`
        other than Flower's default 3600 s is refused with a ValueError."""
        if timeout != 3600:
            raise ValueError(f"{type(self).__name__}.start cannot honour timeout={timeout}: the run-config key "
                             "reply-timeout bounds the wait for replies")
        networks = split_arrays(initial_arrays) if initial_arrays is not None else self.initial_networks()
        return self.run(grid, networks, rounds=num_rounds, train_config=train_config,
                        split=str((evaluate_config or {}).get("split", "val")), evaluate_fn=evaluate_fn)

    def run(self, grid: Grid, networks: Networks, first_round: int = 0, *, rounds: int | None = None,
            train_config: ConfigRecord | None = None, split: str = "val",
            evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Run the stage's rounds (from `first_round`, 0-based, when resuming) with our guarantees: seeded
        sampling of K distinct nodes, rejected bad replies, retried rounds, validation every `eval-every`,
        `on_round` after each round (checkpoints). Discovers the nodes if nobody has. Returns Flower's
        `Result` (its arrays joined) and leaves the last networks in `networks`."""
        if not self.roster.nodes:
            self.roster.discover(grid)
        log(INFO, "Starting %s, stage %r:", type(self).__name__, self.stage.phase)
        self.summary()
        result = Result()
        self.networks = networks
        for index in range(first_round, self.stage.rounds if rounds is None else rounds):
            server_round = self.stage.schedule_start + index + 1
            t0, spent = time.monotonic(), self.ledger.accounts.snapshot()
            self.networks, result.train_metrics_clientapp[server_round] = self.train_round(
                grid, server_round, self.networks, train_config)
            record = self._attempt().record
            validates = self.evaluates_in(index)
            if validates:
                losses = self.evaluate(grid, server_round, self.networks, split)
                result.evaluate_metrics_clientapp[server_round] = _loss_metrics(losses)
                self.validated(record)
            if evaluate_fn is not None and (res := evaluate_fn(server_round, join_arrays(self.networks))) is not None:
                result.evaluate_metrics_serverapp[server_round] = res
            entry = record.entry(server_round=server_round, phase=self.stage.phase, lr=self.lr(server_round),
                                 seconds=time.monotonic() - t0, costs=self.ledger.accounts.since(spent))
            if validates:
                watch_validation(self.ledger.history, entry, phase=self.stage.phase, server_round=server_round,
                                 strategies=self.strategies)
            self.ledger.history.append(entry)
            if self.on_round is not None:
                self.on_round(self)
        result.arrays = join_arrays(self.networks)
        return result


def _loss_metrics(losses: dict[str, dict[str, float]]) -> MetricRecord:
    """Federation -> task letter -> loss as Flower metrics, keyed `<federation>/loss-<letter>`."""
    return MetricRecord({f"{n}{SEP}{P.loss_key(t)}": v for n, by_task in losses.items() for t, v in by_task.items()})


def _only(records: Any) -> Any:
    """The single record of a RecordDict's typed view (a Flower strategy's message holds one of each)."""
    (value,) = records.values()
    return value
