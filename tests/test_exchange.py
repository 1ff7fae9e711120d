"""`exchange.index_deliveries`: in simulation, Flower's engine asks the in-memory LinkState for each
node's messages every 0.1 s; with the index a node with nothing waiting costs O(1), and every node
still gets exactly the messages Flower would have given it."""

from __future__ import annotations

import threading
import time
from queue import Empty, Queue
from uuid import uuid4

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes, add_messages_to_queue
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from mas_flower.strategy.exchange import exchange, index_deliveries


@pytest.fixture
def federation(monkeypatch: pytest.MonkeyPatch) -> tuple[InMemoryGrid, InMemoryLinkState, list[int]]:
    """An in-memory grid over Flower's in-memory LinkState with 50 registered nodes, as
    `flwr.simulation.run_simulation` builds them."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    assert isinstance(state, InMemoryLinkState)
    run = Run.create_empty(run_id=7)
    run.primary_task_id, run.federation_id = 11, NOOP_FEDERATION_ID
    state.run_ids[7] = RunRecord(run=run)
    state.task_store[11] = Task(task_id=11, run_id=7)
    for name, value in (("_task_id", 11), ("_run_id", 7), ("_node_id", SUPERLINK_NODE_ID)):
        monkeypatch.setattr(TaskIdentity, name, value)  # as the simulation sets them; undone after the test
    nodes = list(_register_nodes(50, factory))
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    return grid, state, nodes


def _message(node: int, tag: int, ttl: float | None = None) -> Message:
    return Message(RecordDict({"c": ConfigRecord({"tag": tag})}), dst_node_id=node, message_type="query", ttl=ttl)


def _sweep(state: InMemoryLinkState, nodes: list[int]) -> dict[int, list[int]]:
    """One pass of Flower's engine (`vce_api.add_messages_to_queue`): node -> tags handed to it."""
    out: dict[int, list[int]] = {}
    for node in nodes:
        for msg in state.get_message_ins(node_id=node, limit=1):
            out.setdefault(node, []).append(int(msg.content["c"]["tag"]))
    return out


def test_every_message_reaches_its_node_once_and_idle_nodes_cost_nothing(federation) -> None:
    grid, state, nodes = federation
    checked: list[set[str]] = []
    flower_check = state._check_stored_messages
    state._check_stored_messages = lambda ids, *a: checked.append(set(ids)) or flower_check(ids, *a)  # type: ignore
    assert index_deliveries(grid) and index_deliveries(grid)  # idempotent
    grid.push_messages([_message(nodes[3], 1), _message(nodes[3], 2), _message(nodes[40], 3)])
    assert _sweep(state, nodes) == {nodes[3]: [1], nodes[40]: [3]}  # limit=1: one each per sweep
    assert len(checked) == 2  # the 48 idle nodes cost no check; each of the two checks its own messages only
    assert _sweep(state, nodes) == {nodes[3]: [2]}
    assert _sweep(state, nodes) == {}
    assert len(checked) == 3
    grid.push_messages([_message(nodes[40], 4)])  # a node is indexed again when a new message comes
    assert _sweep(state, nodes) == {nodes[40]: [4]}


def test_same_answers_as_flowers_own(federation) -> None:
    """The same pushes on an indexed and a plain LinkState: every call answers the same messages."""
    grid, state, nodes = federation
    plain = InMemoryLinkState(state.federation_manager, state.object_store)
    plain.run_ids, plain.task_store, plain.nodes = state.run_ids, state.task_store, state.nodes
    index_deliveries(grid)
    tags = iter(range(1000))
    for targets in ([0, 0, 0, 1, 2, 2], [2, 3, 3, 4, 0], [5]):
        for i in targets:
            tag = next(tags)
            for s in (state, plain):
                msg = _message(nodes[i], tag)
                msg.metadata.__dict__["_message_id"] = str(uuid4())
                assert s.store_message_ins(msg) is not None
        for node in nodes[:6]:
            for limit, run_id in ((1, None), (None, 8), (2, 7)):
                answers = [[int(m.content["c"]["tag"]) for m in s.get_message_ins(node, limit, run_id=run_id)]
                           for s in (state, plain)]
                assert answers[0] == answers[1], (node, limit, run_id)
    for s in (state, plain):
        assert all(m.metadata.delivered_at for m in s.message_ins_store.values())
    with pytest.raises(AssertionError):
        state.get_message_ins(nodes[0], 0)


def test_a_message_that_expires_undelivered_is_purged_and_its_node_unindexed(federation) -> None:
    grid, state, nodes = federation
    index_deliveries(grid)
    grid.push_messages([_message(nodes[0], 1, ttl=0.05)])
    time.sleep(0.1)
    assert _sweep(state, nodes) == {}
    assert state.message_ins_store == {}
    assert state.get_message_ins(node_id=nodes[0], limit=1) == []


def test_messages_stored_before_the_index_are_delivered(federation) -> None:
    grid, state, nodes = federation
    grid.push_messages([_message(nodes[5], 9)])
    index_deliveries(grid)
    assert _sweep(state, nodes) == {nodes[5]: [9]}


def test_exchange_with_flowers_own_engine_loop(federation) -> None:
    """Flower's extractor thread hands the messages out; a responder answers each; replies come back tagged."""
    grid, state, nodes = federation
    stop, queue = threading.Event(), Queue()

    def respond() -> None:
        while not stop.is_set():
            try:
                msg = queue.get(timeout=0.05)
            except Empty:
                continue
            reply = Message(RecordDict({"c": ConfigRecord({"node": msg.metadata.dst_node_id})}), reply_to=msg)
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            state.store_message_res(reply)

    threads = [threading.Thread(target=add_messages_to_queue, args=(state, queue, dict.fromkeys(nodes, 0), stop)),
               threading.Thread(target=respond)]
    for t in threads:
        t.start()
    try:
        for batch in ([f"n{i}" for i in range(0, 50, 7)], [f"n{i}" for i in range(50)]):
            replies = exchange(grid, [(tag, _message(nodes[int(tag[1:])], 0)) for tag in batch], timeout=30)
            assert {tag: int(r.content["c"]["node"]) for tag, r in replies.items()} == {
                tag: nodes[int(tag[1:])] for tag in batch}
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert state.message_ins_store == {}


def test_other_grids_are_left_alone() -> None:
    assert index_deliveries(object()) is False  # type: ignore[arg-type]
