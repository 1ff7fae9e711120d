"""The federated arithmetic, pinned with hand-computed values.

Each test fails on one small bug that once survived the whole suite: FedAvg weighting replies
equally instead of by `num-examples`, affinity averaged without its lookahead counts, the split
stage restarting the lr schedule, the ClientApp dropping GradNorm's state between rounds, the
ClientApp ignoring the proximal μ it is sent. Nodes differ in size and lookahead counts (with
equal ones the first two bugs are invisible). The strategies and the ClientApp are the real ones;
only the replies of the first tests are written by hand, so that the expected numbers are too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client_app import app as client
from mas_flower.defaults import load_settings
from mas_flower.methods import FederationSpec, Stage, StageOutcome, build_method
from mas_flower.models import build_model
from mas_flower.strategy import ParallelFederations, wire
from mas_flower.strategy import protocol as P
from mas_flower.strategy.networks import join_arrays, split_arrays

#: node id -> (building, num-examples, affinity value, lookahead count, value of the array `w`).
NODES = {11: ("a", 10, 0.1, 5, 1.0), 22: ("b", 30, 0.2, 3, 4.0), 33: ("c", 60, 0.4, 1, 10.0)}


@pytest.fixture
def in_a_run():
    """Messages need a run identity; this process plays the ServerApp of run 1."""
    before = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before


def settings(**overrides):
    return load_settings({}, {k.replace("_", "-"): v for k, v in overrides.items()})


def one_round(strategy: ParallelFederations, arrays: ArrayRecord) -> tuple[ArrayRecord, list[Message]]:
    """Configure a round, answer every message by hand from NODES, aggregate."""
    sent = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    replies = []
    for msg in sent:
        _, examples, z, count, w = NODES[msg.metadata.dst_node_id]
        content = RecordDict({P.METRICS: MetricRecord({})})
        for name in P.federations_in(msg.content.array_records.keys(), P.ARRAYS):
            n = len(strategy.stage.federations[0].tasks)
            content[P.record_key(P.ARRAYS, name)] = ArrayRecord({
                "w": Array(np.full(2, w, dtype=np.float32)), "count": Array(np.array(int(w) * 2, dtype=np.int64))})
            content[P.record_key(P.METRICS, name)] = MetricRecord({
                P.NUM_EXAMPLES: examples, P.TRAIN_SECONDS: 1.0, P.loss_key("s"): 1.0, P.loss_key("d"): 2.0,
                P.AFFINITY: [z] * (n * n), P.AFFINITY_COUNT: count})
        replies.append(Message(content, reply_to=msg))
    new, _ = strategy.aggregate_train(1, replies)
    return new, sent


@pytest.fixture
def merged_round(in_a_run):
    s = settings(task_set="sd", clients_per_round=3, lr=0.1)
    stage = Stage("merge", [FederationSpec("all", "sd", measure_affinity=True)], rounds=2, schedule_total=2,
                  affinity_rounds=2)
    strategy = ParallelFederations(stage, s, "fedavg")
    strategy.roster.nodes = {nid: building for nid, (building, *_) in NODES.items()}
    start = ArrayRecord({"all/w": Array(np.zeros(2, dtype=np.float32)), "all/count": Array(np.array(0))})
    new, sent = one_round(strategy, start)
    return strategy, new, sent


def test_a_round_samples_k_distinct_nodes(in_a_run) -> None:
    s = settings(task_set="sd", clients_per_round=4, seed=3)
    stage = Stage("merge", [FederationSpec("all", "sd")], rounds=50, schedule_total=50)
    strategy = ParallelFederations(stage, s, "fedavg")
    strategy.roster.nodes = {nid: f"b{nid}" for nid in range(1, 6)}
    arrays = ArrayRecord({"all/w": Array(np.zeros(1, dtype=np.float32))})
    draws = []
    for rnd in range(1, 51):
        nodes = [m.metadata.dst_node_id for m in strategy.configure_train(rnd, arrays, ConfigRecord(), grid=None)]
        assert len(nodes) == 4 and len(set(nodes)) == 4, nodes
        draws.append(tuple(sorted(nodes)))
    assert len(set(draws)) == 5  # every 4-of-5 subset comes up: a sample, not a fixed list


def test_fedavg_weights_replies_by_their_examples(merged_round) -> None:
    _, new, _ = merged_round
    # (10·1 + 30·4 + 60·10) / 100 = 7.3 (equal weights would give 5.0)
    np.testing.assert_allclose(split_arrays(new)["all"]["w"].numpy(), [7.3, 7.3], rtol=1e-6)
    # An integer buffer (BN's batch counter) is averaged the same way and keeps its dtype:
    # (10·2 + 30·8 + 60·20) / 100 = 14.6 -> 14
    count = split_arrays(new)["all"]["count"].numpy()
    assert count.dtype == np.int64 and int(count) == 14


def test_server_weights_client_affinities_by_their_lookahead_counts(merged_round) -> None:
    strategy, _, _ = merged_round
    # (5·0.1 + 3·0.2 + 1·0.4) / 9 = 1.5 / 9 (unweighted: 0.2333; weighted by examples: 0.31)
    matrix = np.array(strategy.attempt.record.federations["all"].affinity)
    np.testing.assert_allclose(matrix, np.full((2, 2), 1.5 / 9), rtol=1e-9)


def test_split_stage_continues_the_lr_schedule(in_a_run) -> None:
    from mas_flower.strategy.networks import fresh_state

    s = settings(method="mas", task_set="sd", splits=2, num_rounds=10, merge_rounds=6, affinity_rounds=1, lr=0.1,
                 clients_per_round=3, image_size=32)
    method = build_method(s)
    merge = method.first_stage()
    outcome = StageOutcome(merge, {"all": fresh_state(s, merge.federations[0])},
                           affinity={"all": np.array([[0.0, -1.0], [-1.0, 0.0]])})
    split = method.next_stage(outcome)
    strategy = ParallelFederations(split, s, "fedavg")
    strategy.roster.nodes = {nid: building for nid, (building, *_) in NODES.items()}
    arrays = join_arrays(strategy.initial_networks())
    sent = list(strategy.configure_train(split.schedule_start + 1, arrays, ConfigRecord(), None))
    # Round R0 + 1 = 7 of R = 10: lr·(1 − R0/R)^0.9 = 0.1 · 0.4^0.9 (a restarted schedule would send 0.1).
    assert [float(m.content[P.CONFIG]["lr"]) for m in sent] == pytest.approx([0.043838329055408694] * 3, rel=1e-12)
    assert {int(m.content[P.record_key(P.CONFIG, "s")]["server-round"]) for m in sent} == {7}


def client_round(tiny_federation: Path, context: Context, spec: FederationSpec, aggregator: str = "fedavg",
                 **overrides) -> tuple[Message, Message]:
    """The real server's train message for one node, answered by the real ClientApp."""
    s = settings(task_set=spec.tasks, clients_per_round=1, image_size=32, batch_size=4, lr=0.1,
                 data_root=str(tiny_federation), **overrides)
    stage = Stage("all-in-one", [spec], rounds=1, schedule_total=1)
    strategy = ParallelFederations(stage, s, aggregator)
    strategy.roster.nodes = {context.node_id: "ignored: the node's partition-id says"}
    (msg,) = strategy.configure_train(1, join_arrays(strategy.initial_networks()), ConfigRecord(), None)
    return msg, client.train(msg, context)


def node_context(node_id: int = 7) -> Context:
    return Context(run_id=1, node_id=node_id, node_config={"partition-id": 0}, state=RecordDict(), run_config={})


def test_client_keeps_gradnorm_weights_between_rounds(in_a_run, one_thread, private_homes,
                                                      tiny_federation: Path) -> None:
    context = node_context()
    seeded = {"w": torch.tensor([1.8, 0.2]), "initial": torch.tensor([1.0, 1.0])}
    context.state.array_records["weighting-all"] = ArrayRecord(seeded)
    msg, reply = client_round(tiny_federation, context, FederationSpec("all", "sd", weighting="gradnorm"))
    assert not reply.has_error()
    w = context.state.array_records["weighting-all"].to_torch_state_dict()["w"]
    # Adam moves each weight by at most its lr 0.025 per step, over the few steps of 8 training views at
    # batch 4; renormalising to sum 2 keeps w_s near 1.8. Fresh weights (1, 1) could not get past ~1.1.
    assert float(w[0]) > 1.5 and float(w.sum()) == pytest.approx(2.0)
    assert not torch.equal(w, seeded["w"])  # and the new weights were saved for the next round


def train_config(msg: Message):
    """The client's TrainConfig for federation `all` of a train message, as the ClientApp reads it."""
    return client.train_config(P.TrainInstruction.from_record(msg.content[P.CONFIG]),
                               P.FederationTrain.from_record(msg.content[P.record_key(P.CONFIG, "all")]))


def test_client_honours_the_proximal_mu_it_is_sent(in_a_run, one_thread, private_homes,
                                                   tiny_federation: Path) -> None:
    msg, _ = client_round(tiny_federation, node_context(), FederationSpec("all", "sd", prox_mu=0.25))
    assert train_config(msg).prox_mu == 0.25
    # Flower's own FedProx sends its μ under the same key, and the client uses it.
    msg, _ = client_round(tiny_federation, node_context(), FederationSpec("all", "sd"), "fedprox", fedprox_mu=0.5)
    assert msg.content[P.record_key(P.CONFIG, "all")][P.PROXIMAL_MU] == 0.5 and train_config(msg).prox_mu == 0.5

    def moved(mu: float) -> float:
        """How far one round moves the trained parameters (not BN statistics) from what the server sent."""
        msg, reply = client_round(tiny_federation, node_context(), FederationSpec("all", "sd", prox_mu=mu))
        like = build_model("tiny", "sd", image_size=32).state_dict()  # packed on the wire (mas_flower.strategy.wire)
        sent = wire.unpack(msg.content[P.record_key(P.ARRAYS, "all")], like).to_torch_state_dict()
        got = wire.unpack(reply.content[P.record_key(P.ARRAYS, "all")], like).to_torch_state_dict()
        return sum(float((got[k] - sent[k]).float().norm() ** 2) for k in sent
                   if sent[k].is_floating_point() and "running_" not in k)

    # μ = 5 at lr 0.1 pulls every step after the first 50 % of the way back to the sent weights.
    assert moved(5.0) < 0.8 * moved(0.0)


def test_one_message_per_node_carries_every_federation_and_replies_go_to_their_own_strategy(in_a_run) -> None:
    s = settings(task_set="sdk", clients_per_round=2, seed=1, lr=0.1)
    stage = Stage("split", [FederationSpec("sd", "sd"), FederationSpec("k", "k")], rounds=2, schedule_total=2)
    strategy = ParallelFederations(stage, s, "fedadam")
    strategy.roster.nodes = {nid: building for nid, (building, *_) in NODES.items()}
    arrays = ArrayRecord({"sd/w": Array(np.zeros(2, dtype=np.float32)), "k/w": Array(np.ones(3, dtype=np.float32))})
    sent = list(strategy.configure_train(1, arrays, ConfigRecord(), None))
    assert len(sent) == 2 and len({m.metadata.dst_node_id for m in sent}) == 2
    for msg in sent:
        assert set(msg.content.array_records) == {"arrays.sd", "arrays.k"}
        assert set(msg.content.config_records) == {"config", "config.sd", "config.k"}
    replies = []
    for n, msg in enumerate(sent):
        content = RecordDict({P.METRICS: MetricRecord({})})
        for name, tasks, size in (("sd", "sd", 2), ("k", "k", 3)):
            value = np.nan if (name == "k" and n == 0) else float(n + 1)  # node 0 poisons only federation k
            content[f"arrays.{name}"] = ArrayRecord({"w": Array(np.full(size, value, dtype=np.float32))})
            content[f"metrics.{name}"] = MetricRecord({P.NUM_EXAMPLES: 10, P.TRAIN_SECONDS: 1.0,
                                                       **{P.loss_key(t): 1.0 for t in tasks}})
        replies.append(Message(content, reply_to=msg))
    new, _ = strategy.aggregate_train(1, replies)
    failed = strategy.attempt.record.failed
    assert len(failed) == 1 and "(k): array 'w' holds NaN" in failed[0]
    # Each federation's own FedAdam moved its own network: from the mean of its accepted replies.
    assert strategy.strategies["sd"] is not strategy.strategies["k"]
    assert strategy.strategies["sd"].m_t["w"].shape == (2,) and strategy.strategies["k"].m_t["w"].shape == (3,)
    # Federation k kept only node 1's reply (w = 2, from 1): Adam's first step moves each weight by
    # eta·sqrt(1 − β2²)/(1 − β1²)·m/(sqrt(v) + τ) with m = 0.1, v = 0.01 and eta 0.01 (server-lr=0 gives
    # FedAdam the measured 0.01, not Flower's 0.1): 0.01·0.14107/0.19·0.1/0.101.
    step = 0.01 * np.sqrt(1 - 0.99 ** 2) / (1 - 0.9 ** 2) * 0.1 / (0.1 + 0.001)
    np.testing.assert_allclose(split_arrays(new)["k"]["w"].numpy(), 1 + step, rtol=1e-5)
    evaluate = list(strategy.configure_evaluate(1, new, ConfigRecord({"split": "val"}), None))
    assert len(evaluate) == 3  # every node validates, one message each, both federations in it
    assert all(set(m.content.array_records) == {"arrays.sd", "arrays.k"} for m in evaluate)


def test_eval_every_validates_every_nth_round_and_the_last() -> None:
    s = settings(task_set="sd", eval_every=2)
    stage = Stage("merge", [FederationSpec("all", "sd")], rounds=5, schedule_total=5)
    strategy = ParallelFederations(stage, s, "fedavg")
    assert [strategy.evaluates_in(i) for i in range(5)] == [False, True, False, True, True]


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm", "fedmedian",
                                  "fedtrimmedavg"])
def test_every_server_strategy_aggregates_a_round(in_a_run, name: str) -> None:
    s = settings(task_set="sd", clients_per_round=3, server_strategy=name, server_momentum=0.5)
    stage = Stage("merge", [FederationSpec("all", "sd")], rounds=1, schedule_total=1)
    strategy = ParallelFederations(stage, s)
    strategy.roster.nodes = {nid: building for nid, (building, *_) in NODES.items()}
    start = ArrayRecord({"all/w": Array(np.zeros(2, dtype=np.float32)), "all/count": Array(np.array(0))})
    new, _ = one_round(strategy, start)
    w = split_arrays(new)["all"]["w"].numpy()
    assert w.dtype == np.float32 and np.isfinite(w).all()
    # Replies hold w = 1, 4 and 10 from 0: the plain averages land on their weighted mean or median.
    expected = {"fedavg": 7.3, "fedprox": 7.3, "fedmedian": 4.0, "fedtrimmedavg": 5.0, "fedavgm": 7.3 * 1.0}
    if name in expected:
        np.testing.assert_allclose(w, expected[name], rtol=1e-6)
    else:  # server optimisers take a step of about eta from 0 towards the mean
        assert 0 < float(w[0]) < 1.0
