"""Membership rules on a scripted Flower Grid (nodes come, go, restart with new ids, stop answering).

A deployed node that stops answering takes Flower ~60 s (2 missed 30 s heartbeats) to be reported
"Node Unavailable", and a restarted SuperNode the same to drop off the node list; these tests drive
the same rules through Flower's `Grid` interface with that timing left out.
"""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from mas_flower.defaults import load_settings
from mas_flower.energy import host_id
from mas_flower.strategy import protocol as P
from mas_flower.strategy.roster import CoverageError, NodeRoster, RoundFailed


class ScriptedGrid(Grid):
    """Lists `nodes` (id -> building); a node answers the info query with its building and its test
    split's size (`test_sizes`, default 2), unless its id is in `down` (Flower then answers "Node
    Unavailable" for it)."""

    def __init__(self, nodes: dict[int, str], test_sizes: dict[int, int] | None = None) -> None:
        self.nodes, self.down, self._replies = dict(nodes), set(), {}
        self.test_sizes = test_sizes or {}

    def get_node_ids(self) -> list[int]:
        return sorted(self.nodes)

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{len(self._replies)}-{i}"
            nid = msg.metadata.dst_node_id
            if nid in self.down:
                reply = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Node Unavailable"), reply_to=msg)
            else:
                reply = Message(RecordDict({P.CONFIG: ConfigRecord({P.BUILDING: self.nodes[nid], P.HOST: host_id(),
                                                                    "size-test": self.test_sizes.get(nid, 2)})}),
                                reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = nid
            self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self._replies.pop(m) for m in message_ids if m in self._replies]

    def set_run(self, run_id):  # pragma: no cover - the Grid interface, unused here
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover
        raise NotImplementedError


@pytest.fixture(autouse=True)
def in_a_run(monkeypatch):
    """Messages are made inside a run (Flower sets the run id when it starts a ServerApp)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)  # the SuperLink
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def roster_on(grid: ScriptedGrid, **config) -> NodeRoster:
    settings = load_settings({"clients-per-round": 2, "node-timeout": 5.0, "reply-timeout": 5.0, "lost-after": 2,
                              **config})
    roster = NodeRoster(settings)
    roster.discover(grid)
    return roster


def test_a_restarted_node_is_used_under_its_new_id_and_its_old_id_never_again() -> None:
    grid = ScriptedGrid({1: "a", 2: "b", 3: "c"})
    roster = roster_on(grid)
    del grid.nodes[2]
    grid.nodes[7] = "b"  # b restarted: Flower no longer lists id 2, and lists 7
    roster.refresh(grid, 2)
    assert roster.nodes == {1: "a", 3: "c", 7: "b"}
    assert {n for _ in range(20) for n in roster.sample()} == {1, 3, 7}


def test_a_new_id_for_a_building_waits_until_the_old_id_fails_then_replaces_it() -> None:
    grid = ScriptedGrid({1: "a", 2: "b", 3: "c"})
    roster = roster_on(grid)
    grid.nodes[8] = "a"  # a restarted, but Flower still lists its old id 1 (its heartbeat has not expired)
    roster.refresh(grid, 2)
    assert roster.nodes == {1: "a", 2: "b", 3: "c"} and 8 in roster.standby
    roster.record_exchange([1, 2], failed={1}, unavailable=set(), server_round=2)
    roster.refresh(grid, 3)
    assert roster.nodes == {8: "a", 2: "b", 3: "c"} and 1 in roster.gone


def test_an_unavailable_node_is_dropped_and_its_building_lost_after_n_rounds() -> None:
    grid = ScriptedGrid({1: "a", 2: "b", 3: "c"})
    roster = roster_on(grid, **{"lost-after": 2})
    roster.record_exchange([2, 3], failed={3}, unavailable={3}, server_round=1)
    assert roster.nodes == {1: "a", 2: "b"} and 3 in roster.gone  # "Node Unavailable": never sampled again
    roster.refresh(grid, 2)  # Flower still lists 3: it is not asked again
    assert roster.lost == {"c": {"round": 2, "failed_in_a_row": 2}}
    with pytest.raises(CoverageError, match=r"covered 2 of the 3 buildings holding test data: missing c \(lost in "
                                            r"round 2\)"):
        roster.check_test_coverage({"all": ["a", "b"]})
    any_ = roster_on(grid, **{"test-coverage": "any"})
    any_.lost = dict(roster.lost)
    assert any_.check_test_coverage({"all": ["a", "b"]})["test_missing"] == ["c"]
    del grid.nodes[2]
    roster.refresh(grid, 3)
    with pytest.raises(RoundFailed, match=r"clients-per-round=2 but only 1 nodes are left \(a\); lost: c"):
        roster.sample()


def test_two_nodes_claiming_one_building_are_refused_at_discovery() -> None:
    with pytest.raises(ValueError, match=r"building 'a': nodes 4, 9"):
        roster_on(ScriptedGrid({4: "a", 9: "a", 5: "b"}))


def test_a_building_whose_test_split_is_empty_holds_no_test_data() -> None:
    grid = ScriptedGrid({1: "a", 2: "b", 3: "c"}, test_sizes={2: 0, 3: 1})  # b has no test views; c has one
    roster = roster_on(grid)
    assert roster.test_buildings == {"a", "c"}
    assert roster.check_test_coverage({"all": ["a", "c"]})["test_missing"] == []  # b is not required
    roster.admit({9: {"building": "z", "remote": False, "sizes": {"train": 3}}})  # no test split
    assert roster.test_buildings == {"a", "c"} and roster.nodes[9] == "z"


def test_a_successful_exchange_resets_the_failures_in_a_row() -> None:
    grid = ScriptedGrid({1: "a", 2: "b", 3: "c"})
    roster = roster_on(grid, **{"lost-after": 2})
    roster.record_exchange([1, 2], failed={1, 2}, unavailable=set(), server_round=1)
    assert roster.failures == {"a": 1, "b": 1, "c": 0}
    roster.record_exchange([1, 3], failed={3}, unavailable=set(), server_round=2)
    assert roster.failures == {"a": 0, "b": 1, "c": 1}  # a succeeded: back to 0; b was not sampled: kept
    roster.record_exchange([1, 2], failed={1, 2}, unavailable=set(), server_round=3)
    # a: fail, success, fail = 1 in a row, under lost-after=2; b: fail, (not sampled), fail = 2: lost
    assert roster.failures == {"a": 1, "b": 2, "c": 1}
    assert roster.lost == {"b": {"round": 3, "failed_in_a_row": 2}} and roster.nodes == {1: "a", 3: "c"}


def test_a_building_one_federation_missed_is_missing_after_a_split() -> None:
    grid = ScriptedGrid({1: "a", 2: "b", 3: "c"})
    covered = {"sd": ["a", "b", "c"], "k": ["a", "c"]}  # the k group's test missed b; sd's covered it
    with pytest.raises(CoverageError, match=r"covered 2 of the 3 buildings holding test data: missing b"):
        roster_on(grid).check_test_coverage(covered, {"b": "reply timed out"})
    summary = roster_on(grid, **{"test-coverage": "any"}).check_test_coverage(covered)
    assert summary["test_missing"] == ["b"] and summary["test_buildings"] == covered
    with pytest.raises(CoverageError):  # any: still every federation must cover one building
        roster_on(grid, **{"test-coverage": "any"}).check_test_coverage({"sd": ["a"], "k": []})
